package cache

import "github.com/redis/go-redis/v9"

// The Lua scripts of the L2 tier. Each runs atomically in Redis, which is
// what makes enforce exact and idempotency keys count once. Keys are
// hash-tagged by subject (q:{user:42}:...) so one subject's keys share a
// cluster slot. The pending stream is a single key for now (see README,
// "Redis Cluster"). Time comes from the caller (expire-at, event time),
// never from redis.call("TIME").

// consumeScript applies a batch of consumes, one after the other, each
// with the same steps: idempotency lookup, the enforce test, the
// increment and the count of unflushed events. The batcher sends the
// consumes that arrive together as one call (a call of one is the
// unloaded case); each op's answer is its own, and an op that fails
// (INCRBY past the int64 range) fails alone, before it changed anything.
// The events of the ops that counted go to the pending stream as one
// entry (see event.go): one XADD per call, and for the flusher one
// entry to read, acknowledge and delete, instead of one per consume.
// Under load Redis's share of the core at the same consume rate went from
// ~24 % to ~14 % with it.
//
//	KEYS[1]        pending stream  q:pending
//	then per op i (0-based), at 2+3i, 3+3i, 4+3i:
//	  counter           q:{S}:c:<meter>:<period start unix>
//	  unflushed events  q:{S}:u:<meter>:<period start unix>
//	  idempotency key   q:{S}:i:<key> (the counter key again when there is none)
//	ARGV per op i, at 1+7i .. 7+7i:
//	  amount; "1" to enforce the limit, "0" to record; limit;
//	  expire-at of the unflushed count when this op creates it (unix s);
//	  idempotency key ("" for none); request hash, stored with the key's
//	  first answer; the event (appendEvent), without the counter's new value
//
// Answers one entry per op: {"dup", "<hash>|<applied>|<amount>|<used>"}
// for a known idempotency key, {"load"} when the counter is not in Redis
// (the caller loads it from Postgres and retries), {"err", message}, or
// {"ok", applied, used}.
var consumeScript = redis.NewScript(`
local out, recs = {}, {}
local function apply(i)
  local ck, uk, ik = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  local a = 7 * i
  local amount, enforce, limit = tonumber(ARGV[a + 1]), ARGV[a + 2] == "1", tonumber(ARGV[a + 3])
  local idem = ARGV[a + 5] ~= ""
  local prev = idem and redis.call("GET", ik)
  if prev then return {"dup", prev} end
  local used = redis.call("GET", ck)
  if not used then return {"load"} end
  used = tonumber(used)
  local applied = 1
  if enforce and used + amount > limit then
    applied = 0
  else
    used = redis.call("INCRBY", ck, amount) -- keeps the expiry the load or reset set
    recs[#recs + 1] = ARGV[a + 7] .. "\31" .. string.format("%d", used)
    if redis.call("INCR", uk) == 1 then redis.call("EXPIREAT", uk, ARGV[a + 4]) end
  end
  if idem then
    redis.call("SET", ik, ARGV[a + 6] .. "|" .. applied .. "|" .. ARGV[a + 1] .. "|" .. string.format("%d", used), "EX", 86400)
  end
  return {"ok", applied, used}
end
for i = 0, (#KEYS - 1) / 3 - 1 do
  -- pcall: an op that fails (INCRBY past the int64 range) fails alone, and
  -- the events of the ops before and after it still reach the stream.
  local ok, res = pcall(apply, i)
  if ok then
    out[i + 1] = res
  else
    out[i + 1] = {"err", type(res) == "table" and res.err or tostring(res)}
  end
end
if #recs > 0 then redis.call("XADD", KEYS[1], "*", "e", table.concat(recs, "\30")) end
return out
`)

// loadScript puts a counter read from Postgres into Redis, unless it is
// there already (another instance loaded it first) or events for it are
// still waiting to be flushed (then Postgres does not hold all of it yet).
//
//	KEYS[1] counter
//	KEYS[2] unflushed events
//	ARGV[1] usage read from Postgres
//	ARGV[2] expire-at, unix seconds
//
// Answers 1 when the counter is in Redis afterwards, 0 when unflushed
// events stopped the load.
var loadScript = redis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 1 then return 1 end
if tonumber(redis.call("GET", KEYS[2]) or "0") > 0 then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "EXAT", ARGV[2])
return 1
`)

// resetScript sets a counter to 0 and queues the reset for Postgres.
//
//	KEYS[1] counter
//	KEYS[2] unflushed events
//	KEYS[3] pending stream
//	ARGV[1] expire-at, unix seconds
//	ARGV[2] the event (appendEvent)
var resetScript = redis.NewScript(`
redis.call("SET", KEYS[1], 0, "EXAT", ARGV[1])
redis.call("INCR", KEYS[2])
redis.call("EXPIREAT", KEYS[2], ARGV[1])
redis.call("XADD", KEYS[3], "*", "e", ARGV[2] .. "\31" .. "0")
return 1
`)

// ackScript acknowledges flushed stream entries: each entry is acked, and
// the counters' unflushed counts go down by the events of the entries
// that this call acked (XACK answers 1 only the first time, so acking a
// replayed batch again changes nothing); then the entries are deleted
// from the stream in bulk.
//
//	KEYS[1]     pending stream
//	KEYS[2..]   the distinct unflushed-event keys of the entries
//	ARGV[1]     consumer group
//	ARGV[2..]   per entry: its id, the number k of its events that have an
//	            unflushed count (provisions have none), then k indexes into
//	            KEYS[2..] (1-based), one per such event
var ackScript = redis.NewScript(`
local counts, ids, acked, i = {}, {}, 0, 2
while i <= #ARGV do
  local id, k = ARGV[i], tonumber(ARGV[i + 1])
  ids[#ids + 1] = id
  if redis.call("XACK", KEYS[1], ARGV[1], id) == 1 then
    acked = acked + 1
    for j = i + 2, i + 1 + k do
      local key = tonumber(ARGV[j])
      counts[key] = (counts[key] or 0) + 1
    end
  end
  i = i + 2 + k
end
for key, n in pairs(counts) do
  if redis.call("DECRBY", KEYS[key + 1], n) <= 0 then redis.call("DEL", KEYS[key + 1]) end
end
for j = 1, #ids, 1000 do
  redis.call("XDEL", KEYS[1], unpack(ids, j, math.min(j + 999, #ids)))
end
return acked
`)

// provisionScript stores a new subject unless one is there, queuing it for
// Postgres, and answers the stored subject: every instance agrees on the
// first one's plan and cycle anchor without a Postgres write.
//
//	KEYS[1] subject settings  q:{S}:s
//	KEYS[2] pending stream
//	ARGV[1] the subject, JSON
//	ARGV[2] the provision event (appendEvent)
//	ARGV[3] time to live, seconds
var provisionScript = redis.NewScript(`
if redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[3]) then
  redis.call("XADD", KEYS[2], "*", "e", ARGV[2] .. "\31" .. "0")
  return ARGV[1]
end
return redis.call("GET", KEYS[1])
`)
