"""The Lua scripts of ``RedisCounterStore`` and the wire format they read.

Each runs atomically inside Redis: a reservation checks and increments all of a
call's counters with no other client in between. Kept apart from the store so
the store reads as Python and the scripts as one protocol.
"""

#: How many expired reservations one ``reserve`` releases at most (keeps the script short).
SWEEP_BATCH = 16

# Wire format of a charge (flat, one ARGV per field):
#   amount, key, limit (-1: none), ttl (0: forever), n, then n window keys.
# n = 0: the window is the key alone; n = -1: the charge is only counted, its
# total is neither read nor returned (reserve: unlimited charges that report
# nothing, such as runaway meters; settle: charges that report nothing).
# At settle, ``amount`` is the delta to apply if the reservation is still held
# (actual - reserved) and ``limit`` is the actual amount (applied in full when
# the reservation expired and was released). The amount comes first so that
# everything after it, fixed for a whole window, is encoded once (``RedisCounterStore._reserve_part``).

# Reserve. ARGV: zset, member, now, deadline, sweep (1: release expired first), charges…
# Returns {1, total…} when admitted (0 for count-only charges); {0, refused index, total before} when not.
RESERVE = """
local zset, member, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function split(s)
  local f, at = {}, 1
  while true do
    local j = string.find(s, '\\0', at, true)
    if not j then f[#f + 1] = string.sub(s, at); return f end
    f[#f + 1] = string.sub(s, at, j - 1)
    at = j + 1
  end
end
if ARGV[5] == '1' then
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, %d)) do
    -- the member: reservation id, then (key, amount) pairs, NUL-separated
    local f = split(old)
    if #f > 1 then
      for k = 2, #f - 1, 2 do redis.call('DECRBY', f[k], f[k + 1]) end
    else
      -- made by an earlier version: the id alone, its holdings in <prefix>res:<id>, keys relative to the prefix
      local prefix = string.sub(zset, 1, #zset - 4)
      local held = redis.call('GET', prefix .. 'res:' .. old)
      if held then
        local h = split(held)
        for k = 1, #h - 1, 2 do redis.call('DECRBY', prefix .. h[k], h[k + 1]) end
        redis.call('DEL', prefix .. 'res:' .. old)
      end
    end
    redis.call('ZREM', zset, old)
  end
end
local last, totals, i = #ARGV, {1}, 6
while i <= last do
  local amount, key, limit, n = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4])
  local sum = 0
  if n == 0 then
    sum = tonumber(redis.call('GET', key) or '0')
  elseif n > 0 then
    for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 5, i + 4 + n))) do
      if v then sum = sum + tonumber(v) end
    end
  end
  if limit >= 0 and sum + amount > limit then return {0, #totals - 1, sum} end
  totals[#totals + 1] = n >= 0 and sum + amount or 0
  if n > 0 then i = i + 5 + n else i = i + 5 end
end
local held = false
i = 6
while i <= last do
  local amount, n = ARGV[i], tonumber(ARGV[i + 4])
  if amount ~= '0' then
    local key, ttl = ARGV[i + 1], ARGV[i + 3]
    -- a counter equal to what was just added is new: give it its lifetime once
    if redis.call('INCRBY', key, amount) == tonumber(amount) and ttl ~= '0' then redis.call('EXPIRE', key, ttl) end
    held = true
  end
  if n > 0 then i = i + 5 + n else i = i + 5 end
end
if held then redis.call('ZADD', zset, deadline, member) end
return totals
""" % SWEEP_BATCH

# Settle. ARGV: zset, then groups: member, number of charge arguments, charges…
# Returns the window total of every charge sent with n >= 0, in order.
SETTLE = """
local zset, out, i, last = ARGV[1], {}, 2, #ARGV
while i <= last do
  -- still held: apply actual - reserved; expired (and released by a sweep): apply actual in full
  local held = redis.call('ZREM', zset, ARGV[i]) == 1
  local stop = i + 1 + tonumber(ARGV[i + 1])
  i = i + 2
  while i <= stop do
    local key, n = ARGV[i + 2], tonumber(ARGV[i + 4])
    local delta = held and ARGV[i] or ARGV[i + 1]
    if delta ~= '0' then
      local ttl = ARGV[i + 3]
      if redis.call('INCRBY', key, delta) == tonumber(delta) and ttl ~= '0' then redis.call('EXPIRE', key, ttl) end
    end
    if n == 0 then
      out[#out + 1] = tonumber(redis.call('GET', key) or '0')
    elseif n > 0 then
      local sum = 0
      for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 5, i + 4 + n))) do
        if v then sum = sum + tonumber(v) end
      end
      out[#out + 1] = sum
    end
    if n > 0 then i = i + 5 + n else i = i + 5 end
  end
end
return out
"""

# ARGV: key, amount, ttl — add without a reservation; never shortens a lifetime
# (works on Redis 6, which has no EXPIRE GT/NX)
ADD = """
local v = redis.call('INCRBY', ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 and redis.call('TTL', ARGV[1]) < ttl then redis.call('EXPIRE', ARGV[1], ttl) end
return v
"""

# ARGV: windows, each as n, then n keys
READ = """
local out, i = {}, 1
while i <= #ARGV do
  local n, sum = tonumber(ARGV[i]), 0
  if n > 0 then
    for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 1, i + n))) do
      if v then sum = sum + tonumber(v) end
    end
  end
  out[#out + 1] = sum
  i = i + 1 + n
end
return out
"""
