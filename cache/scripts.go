package cache

import "github.com/redis/go-redis/v9"

// The Lua scripts of the L2 tier. Each runs atomically in Redis, which is
// what makes enforce exact and idempotency keys count once. Keys are
// named by Layout (keys.go): a script's keys, the pending stream
// included, share one hash tag, so on Redis Cluster they share a slot.
// Time comes from the
// caller (expire-at, event time), never from redis.call("TIME").

// consumeScript applies a batch of consumes, one after the other, each
// with the same steps: idempotency lookup, the enforce test and the
// increment. The batcher sends the consumes that arrive together as one
// call (a call of one is the unloaded case); each op's answer is its own,
// and an op that fails (INCRBY past the int64 range) fails alone, before
// it changed anything. The events of the ops that counted go to the
// pending stream as one entry (see event.go): one XADD per call, and for
// the flusher one entry to read, acknowledge and delete, instead of one
// per consume.
//
// Nothing per counter records that it has events still unflushed: the
// stream itself does (the flusher deletes what it acknowledged), and only
// a load needs to know (Counter.load). An earlier unflushed count per counter (INCR
// here, DECRBY at the ack) was half of this script's Redis calls.
//
//	KEYS[1]        the ops' pending stream (every op's subject's: the
//	               batcher groups consumes by stream)
//	then per op i (0-based), at 2+3i, 3+3i, 4+3i:
//	  counter           q:{S}:c:<meter>:<period start unix>
//	  idempotency key   q:{S}:i:<key> (the counter key again when there is none)
//	  holds             q:{S}:h:<meter>:<period start unix> (see reserveScript)
//	ARGV per op i, at 1+8i .. 8+8i:
//	  amount; "1" to enforce the limit, "0" to record; limit;
//	  idempotency key ("" for none); request hash, stored with the key's
//	  first answer; the event (appendEvent), without the counter's new
//	  value; now, unix milliseconds (which holds are live); how long
//	  Redis keeps the key, seconds (Counter.KeyWindow)
//
// Only an op that applied stores its idempotency key: an enforce op the
// limit refused changed nothing, so a retry with its key (after a reset
// or a raised limit) is tried again rather than answered "refused" for a
// day, as a payment API replays only a completed payment.
//
// Answers three values per op, in one flat array (a table per op cost
// Redis measurably more; the figure is in ac2ea55's message): applied (0 or 1) and used when it counted or refused;
// "dup", "<hash>|<applied>|<amount>|<used>" for a known idempotency key;
// "load", "" when the counter is not in Redis (the caller loads it from
// Postgres, see Counter.load, and retries); "err", message. The third is
// what live reservations hold; enforce counts it against the limit.
// Counts are answered as decimal strings (see exactLua).
var consumeScript = redis.NewScript(exactLua + heldLua + `
local out, recs = {}, {}
local function apply(i)
  local ck, ik, hk = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  local a = 8 * i
  local amount, idem = ARGV[a + 1], ARGV[a + 4] ~= ""
  local hh, hl = held(hk, ARGV[a + 7])
  local prev = idem and redis.call("GET", ik)
  if prev then return "dup", prev, dec(hh, hl) end
  local used = redis.call("GET", ck)
  if not used then return "load", "", "0" end
  local applied = 1
  if ARGV[a + 2] == "1" and not fits(used, hh, hl, amount, ARGV[a + 3]) then
    applied = 0
  else
    redis.call("INCRBY", ck, amount) -- keeps the expiry the load or reset set
    used = plus(used, amount) -- what INCRBY made it, exactly: its reply is a Lua number
    recs[#recs + 1] = ARGV[a + 6] .. "\31" .. used
  end
  if idem and applied == 1 then
    redis.call("SET", ik, ARGV[a + 5] .. "|" .. applied .. "|" .. amount .. "|" .. used, "EX", ARGV[a + 8])
  end
  return applied, used, dec(hh, hl)
end
for i = 0, (#KEYS - 1) / 3 - 1 do
  -- pcall: an op that fails (INCRBY past the int64 range) fails alone, and
  -- the events of the ops before and after it still reach the stream.
  local ok, a, b, c = pcall(apply, i)
  if ok then
    out[3 * i + 1], out[3 * i + 2], out[3 * i + 3] = a, b, c
  else
    out[3 * i + 1], out[3 * i + 2], out[3 * i + 3] = "err", type(a) == "table" and a.err or tostring(a), 0
  end
end
if #recs > 0 then redis.call("XADD", KEYS[1], "*", "e", table.concat(recs, "\30")) end
return out
`)

// loadScript stores a copy read from Postgres (a counter, a subject's
// settings) unless Redis has one (another load was first) or the
// subject's copies were dropped as stale since the load read the drop
// mark (what it read may miss a write Postgres took directly; see
// Counter.load). Answers 1 when the key is in Redis now, 0 when the drop
// mark moved.
//
//	KEYS[1] counter or settings
//	KEYS[2] the subject's drop mark  q:{S}:drops
//	ARGV[1] the value read from Postgres
//	ARGV[2] expire-at, unix seconds
//	ARGV[3] the drop mark read before Postgres ("" for none)
var loadScript = redis.NewScript(`
if (redis.call("GET", KEYS[2]) or "") ~= ARGV[3] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "NX", "EXAT", ARGV[2])
return 1
`)

// dropScript drops a subject's stale copy and moves its drop mark, in
// one step: a load must never see the copy gone and the mark not yet
// moved (its horizon could miss events counted on the copy before the
// DEL; see Counter.load). The mark is a token no earlier drop used, not
// a count: a count that expired and started again could repeat a value
// a running load read.
//
//	KEYS[1] the subject's drop mark  q:{S}:drops
//	KEYS[2] the stale copy (a counter or the subject's settings)
//	ARGV[1] the token
//	ARGV[2] the mark's time to live, seconds
var dropScript = redis.NewScript(`
redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
redis.call("DEL", KEYS[2])
return 1
`)

// resetScript sets a counter to 0 and queues the reset for Postgres.
//
//	KEYS[1] counter
//	KEYS[2] pending stream
//	ARGV[1] expire-at, unix seconds
//	ARGV[2] the event (appendEvent)
var resetScript = redis.NewScript(`
redis.call("SET", KEYS[1], 0, "EXAT", ARGV[1])
redis.call("XADD", KEYS[2], "*", "e", ARGV[2] .. "\31" .. "0")
return 1
`)

// ackScript acknowledges flushed stream entries and deletes them from the
// stream, in one step: an entry acknowledged but left in the stream would
// look unflushed to Counter.load for good. XACK answers 1 only the first
// time, so acking a replayed batch again changes nothing.
//
//	KEYS[1]     pending stream
//	ARGV[1]     consumer group
//	ARGV[2..]   entry ids
var ackScript = redis.NewScript(`
local acked = 0
for j = 2, #ARGV, 1000 do
  local last = math.min(j + 999, #ARGV)
  acked = acked + redis.call("XACK", KEYS[1], ARGV[1], unpack(ARGV, j, last))
  redis.call("XDEL", KEYS[1], unpack(ARGV, j, last))
end
return acked
`)

// statsScript looks at the pending stream in one step: its length, the
// id of its oldest entry, of the oldest one the flushers' group has not
// read yet, and of the newest ("" for none; with no group yet every entry
// counts as unread). Entries read but not acknowledged (being flushed, or
// left by a dead flusher until they are claimed) are not unread.
//
//	KEYS[1] pending stream
//	ARGV[1] consumer group
var statsScript = redis.NewScript(`
local n = redis.call("XLEN", KEYS[1])
if n == 0 then return {0, "", "", ""} end
local first = redis.call("XRANGE", KEYS[1], "-", "+", "COUNT", 1)[1]
local newest = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)[1]
local last = "0-0"
local groups = redis.pcall("XINFO", "GROUPS", KEYS[1])
if type(groups) == "table" and not groups.err then
  for _, g in ipairs(groups) do
    local name, id
    for i = 1, #g, 2 do
      if g[i] == "name" then name = g[i + 1] elseif g[i] == "last-delivered-id" then id = g[i + 1] end
    end
    if name == ARGV[1] and id then last = id end
  end
end
local unread = redis.call("XRANGE", KEYS[1], "(" .. last, "+", "COUNT", 1)[1]
return {n, first and first[1] or "", unread and unread[1] or "", newest and newest[1] or ""}
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

// Reservations. A counter's live holds are one sorted set, q:{S}:h:<meter>:
// <period start unix>: member "<amount>:<reservation id>", score the
// expiry in unix milliseconds. A hold counts while its expiry is in the
// future, wherever it is read (heldLua): an unsettled hold frees itself at
// its expiry on every instance, with nothing to sweep it; scripts that
// write the set drop the expired members as they pass. Each reservation
// also has a record, q:{S}:r:<id>, which tells commit and release what
// happened to it: "held", "released", or "c|<amount>|<used>|<expired>"
// once committed (the first commit's answer). The record outlives the
// hold by a day, so a late commit is still recorded and a late retry
// still answered.

// exactLua defines exact arithmetic on counts. Counts reach the int64
// range, but a Lua 5.1 number is a double, exact only up to 2^53: past it
// an INCRBY's reply, a sum or a comparison with the limit would be
// rounded. So a count is read as the decimal string Redis keeps, split
// into two exact parts, hi * 10^9 + lo, to be added and compared, and
// answered as a decimal string again, never as a Lua number. Counts,
// amounts and limits are never negative.
//
//	split(s)           the parts of decimal string s
//	add(ah, al, bh, bl) the parts of a + b
//	dec(h, l)          the decimal string of parts h, l
//	plus(a, b)         the decimal string of a + b, decimal strings
//	fits(used, hh, hl, amount, limit)  used + held + amount <= limit
const exactLua = `
local E9 = 1000000000
local function split(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end
local function add(ah, al, bh, bl)
  local l = al + bl
  if l >= E9 then return ah + bh + 1, l - E9 end
  return ah + bh, l
end
local function dec(h, l)
  if h == 0 then return string.format("%d", l) end
  return string.format("%d%09d", h, l)
end
local function plus(a, b)
  local ah, al = split(a)
  local bh, bl = split(b)
  return dec(add(ah, al, bh, bl))
end
local function fits(used, hh, hl, amount, limit)
  local th, tl = split(used)
  th, tl = add(th, tl, hh, hl)
  local ah, al = split(amount)
  th, tl = add(th, tl, ah, al)
  local lh, ll = split(limit)
  return th < lh or (th == lh and tl <= ll)
end
`

// heldLua defines held(hk, now): what the live holds of a counter hold,
// as exact parts (see exactLua, which it needs).
const heldLua = `
local function held(hk, now)
  local h, l = 0, 0
  for _, m in ipairs(redis.call("ZRANGEBYSCORE", hk, "(" .. now, "+inf")) do
    local mh, ml = split(string.sub(m, 1, string.find(m, ":", 1, true) - 1))
    h, l = add(h, l, mh, ml)
  end
  return h, l
end
local function sweep(hk, now)
  local gone = redis.call("ZRANGEBYSCORE", hk, "-inf", now)
  if #gone > 0 then redis.call("ZREMRANGEBYSCORE", hk, "-inf", now) end
  return gone
end
`

// reserveScript holds an amount if it fits: used + held + amount <=
// limit (or always, when not enforced), like an enforce consume.
//
//	KEYS[1] counter; KEYS[2] holds; KEYS[3] the reservation's record;
//	KEYS[4] idempotency key (the record again when there is none)
//	ARGV    amount; "1" to enforce; limit; now (unix ms); expiry (unix ms);
//	        id; idempotency key ("" for none); request hash; the record's
//	        expire-at (unix ms)
//
// Answers {granted (0 or 1), used, held after it, expired members} or
// {"dup", "<hash>|<granted>|<amount>|<used>|<id>|<expiry>", held} or
// {"load"} when the counter is not in Redis; counts as decimal strings
// (see exactLua).
var reserveScript = redis.NewScript(exactLua + heldLua + `
local ck, hk, rk, ik = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = ARGV[4]
local idem = ARGV[7] ~= ""
if idem then
  local prev = redis.call("GET", ik)
  if prev then return {"dup", prev, dec(held(hk, now))} end
end
local used = redis.call("GET", ck)
if not used then return {"load"} end
local gone = sweep(hk, now)
local hh, hl = held(hk, now)
local granted = 1
if ARGV[2] == "1" and not fits(used, hh, hl, ARGV[1], ARGV[3]) then
  granted = 0
else
  redis.call("ZADD", hk, ARGV[5], ARGV[1] .. ":" .. ARGV[6])
  local last = redis.call("ZRANGE", hk, -1, -1, "WITHSCORES")
  redis.call("PEXPIREAT", hk, math.max(tonumber(last[2]), tonumber(ARGV[5])) + 60000)
  redis.call("SET", rk, "held", "PXAT", ARGV[9])
  local ah, al = split(ARGV[1])
  hh, hl = add(hh, hl, ah, al)
end
if idem and granted == 1 then -- a refused hold keeps no key, like a refused consume
  redis.call("SET", ik, ARGV[8] .. "|" .. granted .. "|" .. ARGV[1] .. "|" .. used .. "|" .. ARGV[6] .. "|" .. ARGV[5], "EX", 86400)
end
return {granted, used, dec(hh, hl), gone}
`)

// commitScript records a reservation's actual cost and frees its hold in
// one step; a second commit answers the first one's values.
//
//	KEYS[1] counter; KEYS[2] holds; KEYS[3] record; KEYS[4] pending stream
//	ARGV    amount; the hold's member; now (unix ms); "1" if committed
//	        after the expiry; the event (appendEvent), without the
//	        counter's new value; "1" while the record should still exist
//	        (up to a day after the expiry); the record's expire-at (unix ms)
//
// A record that should exist but does not was lost with Redis's data (or
// the id was made up by a caller who could consume for the subject
// anyway): the work happened, so it is recorded all the same, and the
// record written so that a retry counts once.
//
// Answers {"ok", used, held} or {"dup", "<amount>|<used>|<expired>", held},
// {"unknown"}, {"released"} or {"load"}; counts as decimal strings (see
// exactLua).
var commitScript = redis.NewScript(exactLua + heldLua + `
local ck, hk, rk = KEYS[1], KEYS[2], KEYS[3]
local rec = redis.call("GET", rk)
if not rec then
  if ARGV[6] ~= "1" then return {"unknown"} end
  redis.call("SET", rk, "held", "PXAT", ARGV[7])
  rec = "held"
end
if rec == "released" then return {"released"} end
if string.sub(rec, 1, 2) == "c|" then return {"dup", string.sub(rec, 3), dec(held(hk, ARGV[3]))} end
local used = redis.call("GET", ck)
if not used then return {"load"} end
redis.call("ZREM", hk, ARGV[2])
redis.call("INCRBY", ck, ARGV[1])
used = plus(used, ARGV[1])
redis.call("XADD", KEYS[4], "*", "e", ARGV[5] .. "\31" .. used)
redis.call("SET", rk, "c|" .. ARGV[1] .. "|" .. used .. "|" .. ARGV[4], "KEEPTTL")
return {"ok", used, dec(held(hk, ARGV[3]))}
`)

// releaseScript frees a hold without consuming; a second release changes
// nothing.
//
//	KEYS[1] counter; KEYS[2] holds; KEYS[3] record
//	ARGV    the hold's member; now (unix ms)
//
// Answers {released before (0 or 1), used ("" when the counter is not in
// Redis), held} or {"unknown"} or {"committed"}; counts as decimal strings
// (see exactLua).
var releaseScript = redis.NewScript(exactLua + heldLua + `
local rec = redis.call("GET", KEYS[3])
if not rec then return {"unknown"} end
if string.sub(rec, 1, 2) == "c|" then return {"committed"} end
local before = rec == "released" and 1 or 0
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("SET", KEYS[3], "released", "KEEPTTL")
return {before, redis.call("GET", KEYS[1]) or "", dec(held(KEYS[2], ARGV[2]))}
`)
