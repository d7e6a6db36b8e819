package cache

import "github.com/redis/go-redis/v9"

// The Lua scripts of the L2 tier. Each runs atomically in Redis, which is
// what makes enforce exact and idempotency keys count once. Keys are
// hash-tagged by subject (q:{user:42}:...) so one subject's keys share a
// cluster slot. The pending stream is a single key for now (see README,
// "Redis Cluster"). Time comes from the caller (expire-at, event time),
// never from redis.call("TIME").

// consumeScript applies one consume.
//
//	KEYS[1] counter           q:{S}:c:<meter>:<period start unix>
//	KEYS[2] unflushed events  q:{S}:u:<meter>:<period start unix>
//	KEYS[3] idempotency key   q:{S}:i:<key> (KEYS[1] again when there is none)
//	KEYS[4] pending stream    q:pending
//	ARGV[1] amount
//	ARGV[2] "1" to enforce the limit, "0" to record
//	ARGV[3] limit
//	ARGV[4] expire-at of the unflushed count when this consume creates it, unix seconds
//	ARGV[5] idempotency key, "" for none
//	ARGV[6] request hash, stored with the key's first answer
//	ARGV[7] the event, JSON, without the counter's new value
//
// Answers {"dup", "<hash>|<applied>|<amount>|<used>"} for a known
// idempotency key, {"load"} when the counter is not in Redis (the caller
// loads it from Postgres and retries), else {"ok", applied, used}.
var consumeScript = redis.NewScript(`
local idem = ARGV[5] ~= ""
if idem then
  local prev = redis.call("GET", KEYS[3])
  if prev then return {"dup", prev} end
end
local used = redis.call("GET", KEYS[1])
if not used then return {"load"} end
used = tonumber(used)
local amount = tonumber(ARGV[1])
local applied = 1
if ARGV[2] == "1" and used + amount > tonumber(ARGV[3]) then
  applied = 0
else
  used = redis.call("INCRBY", KEYS[1], amount) -- keeps the expiry the load or reset set
  if redis.call("INCR", KEYS[2]) == 1 then redis.call("EXPIREAT", KEYS[2], ARGV[4]) end
  redis.call("XADD", KEYS[4], "*", "e", ARGV[7], "used", used)
end
if idem then
  redis.call("SET", KEYS[3], ARGV[6] .. "|" .. applied .. "|" .. ARGV[1] .. "|" .. used, "EX", 86400)
end
return {"ok", applied, used}
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
//	ARGV[2] the event, JSON
var resetScript = redis.NewScript(`
redis.call("SET", KEYS[1], 0, "EXAT", ARGV[1])
redis.call("INCR", KEYS[2])
redis.call("EXPIREAT", KEYS[2], ARGV[1])
redis.call("XADD", KEYS[3], "*", "e", ARGV[2], "used", 0)
return 1
`)

// ackScript acknowledges flushed events: each entry is acked, and the
// counters' unflushed counts go down by the number of their entries that
// this call acked (XACK answers 1 only the first time, so acking a
// replayed batch again changes nothing); then the entries are deleted
// from the stream in bulk.
//
//	KEYS[1]     pending stream
//	KEYS[2..]   the distinct unflushed-event keys of the batch
//	ARGV[1]     consumer group
//	ARGV[2..]   pairs: stream entry id, index into KEYS[2..] of its
//	            unflushed key (1-based; 0 for a provision, which has none)
var ackScript = redis.NewScript(`
local counts, ids, acked = {}, {}, 0
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  if redis.call("XACK", KEYS[1], ARGV[1], ARGV[i]) == 1 then
    acked = acked + 1
    local key = tonumber(ARGV[i + 1])
    if key > 0 then counts[key] = (counts[key] or 0) + 1 end
  end
end
for key, n in pairs(counts) do
  if redis.call("DECRBY", KEYS[key + 1], n) <= 0 then redis.call("DEL", KEYS[key + 1]) end
end
for i = 1, #ids, 1000 do
  redis.call("XDEL", KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
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
//	ARGV[2] the provision event, JSON
//	ARGV[3] time to live, seconds
var provisionScript = redis.NewScript(`
if redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[3]) then
  redis.call("XADD", KEYS[2], "*", "e", ARGV[2], "used", 0)
  return ARGV[1]
end
return redis.call("GET", KEYS[1])
`)
