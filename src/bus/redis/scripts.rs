//! The Lua scripts the Redis transport runs: each is one atomic step on the server, so a
//! reader never receives an entry it has not checked, and an entry is never both acknowledged
//! and kept.
//!
//! Why reads go through a script rather than a blocking `XREADGROUP`: a blocking read returns
//! whatever was written, however large (32 entries of 32 MiB took a controller to 2.2 GB), and
//! a read still waiting on the server when an instance drains takes the next entry for an
//! instance that is gone. The script reads without blocking, moves every entry larger than
//! `bus.max_envelope_size` to the poison stream unread (by the client), and the reader waits
//! for a one-byte pub/sub nudge (`~`) that publishers send beside each entry, or its poll
//! interval.

use std::sync::LazyLock;

/// A Lua script, sent with `EVAL` (a few hundred bytes a call; no `SCRIPT LOAD` state to lose
/// when Redis restarts).
pub(super) struct Script(String);

impl Script {
    pub(super) fn new(src: &str) -> Self {
        Self(src.to_string())
    }

    /// A call of the script with these keys; add its arguments with `arg`.
    pub(super) fn call(&self, keys: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.0).arg(keys.len()).arg(keys);
        cmd
    }
}

/// `poison(key, id, fields, reason, deliveries, now)`: copies an entry's envelope (and
/// signature) to the poison stream with why it moved; the envelope is left out when it is over
/// the size limit.
const POISON_FN: &str = r"
local function size_of(fields)
  local size = 0
  for _, v in ipairs(fields) do size = size + #v end
  return size
end
local function poison(poison_key, key, id, fields, reason, deliveries, now, keep)
  local entry = {'stream', key, 'entry', id, 'reason', reason, 'deliveries', deliveries,
                 'size', size_of(fields), 'moved_at_ms', now}
  if keep then
    for i = 1, #fields, 2 do
      if fields[i] == 'envelope' or fields[i] == 'sig' then
        entry[#entry + 1] = fields[i]
        entry[#entry + 1] = fields[i + 1]
      end
    end
  end
  redis.call('XADD', poison_key, '*', unpack(entry))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Appends an entry. KEYS[1] the stream, KEYS[2] (optional) a counter whose next value the
/// entry carries as `seq` (one order over all the fan-out streams). ARGV: mode (`fan`: trimmed to entries younger than
/// the retention; `backlog`: refused with `FULL` at the limit; `cap`: about the limit's newest
/// entries), retention ms, expiry ms (0: none), limit, nudge channel (empty: none), then the
/// entry's field/value pairs. Returns the entry id and its `seq` (0 without a counter).
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local key, mode = KEYS[1], ARGV[1]
local retention, expiry, limit, nudge = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local seq = 0
if KEYS[2] then
  seq = redis.call('INCR', KEYS[2])
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = seq
end
local id
if mode == 'fan' then
  local t = redis.call('TIME')
  local minid = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - retention
  if minid < 0 then minid = 0 end
  id = redis.call('XADD', key, 'MINID', '~', minid, '*', unpack(fields))
elseif mode == 'backlog' then
  local n = redis.call('XLEN', key)
  if n >= limit then return redis.error_reply('FULL ' .. n) end
  id = redis.call('XADD', key, '*', unpack(fields))
else
  id = redis.call('XADD', key, 'MAXLEN', '~', limit, '*', unpack(fields))
end
if expiry > 0 then redis.call('PEXPIRE', key, expiry) end
if nudge ~= '' then redis.call('PUBLISH', nudge, '~') end
return {id, seq}
",
    )
});

/// Reads new entries of several streams without blocking. KEYS: the streams. ARGV: consumer,
/// count per stream, size limit, poison stream, then per stream a triple: `g` (read as the
/// consumer of a group) or `x` (read the range after an id), the group (or empty), the id to
/// start from (`>` for new entries, `0` for this consumer's pending ones). Returns entries as
/// `[stream, id, field, value, ...]`; an entry over the size limit is moved to the poison
/// stream (group reads) and returned as `[stream, id, '~oversized', size]`.
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POISON_FN}{}",
        r"
local me, count, max, poison_key = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local out = {}
for i, key in ipairs(KEYS) do
  local base = 4 + (i - 1) * 3
  local kind, group, from = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local entries = {}
  if kind == 'g' then
    local r = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', key, from)
    if r and r[1] then entries = r[1][2] end
  else
    entries = redis.call('XRANGE', key, '(' .. from, '+', 'COUNT', count)
  end
  for _, e in ipairs(entries) do
    local id, fields = e[1], e[2]
    if not fields then
      if kind == 'g' then redis.call('XACK', key, group, id) end
    else
      local size = size_of(fields)
      if size > max then
        if kind == 'g' then
          poison(poison_key, key, id, fields,
            'entry of ' .. size .. ' bytes is over bus.max_envelope_size (' .. max .. ' bytes)', 1, now, false)
          redis.call('XACK', key, group, id)
          redis.call('XDEL', key, id)
        end
        out[#out + 1] = {key, id, '~oversized', tostring(size)}
      else
        local item = {key, id}
        for _, v in ipairs(fields) do item[#item + 1] = v end
        out[#out + 1] = item
      end
    end
  end
end
return out
"
    ))
});

/// Takes over a competing stream's entries idle for the claim timeout (another consumer's, or
/// this one's whose handler failed), or moves them to the poison stream once delivered the
/// maximum times. KEYS[1] the stream. ARGV: group, consumer,
/// idle ms, max deliveries, count, size limit, poison stream, error key prefix. Returns the
/// entries taken over like [`READ`], and `[stream, id, '~poisoned', deliveries]` for moved ones.
pub(super) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POISON_FN}{}",
        r"
local key = KEYS[1]
local group, me, idle, maxd = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local count, max, poison_key, errs = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now = now_ms()
local out = {}
local pending = redis.call('XPENDING', key, group, 'IDLE', idle, '-', '+', count)
for _, p in ipairs(pending) do
  local id, owner, deliveries = p[1], p[2], tonumber(p[4])
  local e = redis.call('XRANGE', key, id, id)
  if owner == me and redis.call('EXISTS', errs .. id) == 0 then
    -- Waiting in this instance behind a slower event (no handler failed on it): it is here
    -- already; taking it again would only count a delivery that never was.
  elseif #e == 0 or not e[1][2] then
    redis.call('XACK', key, group, id)
  else
    local fields = e[1][2]
    local size = size_of(fields)
    if deliveries >= maxd or size > max then
      local why
      if size > max then
        why = 'entry of ' .. size .. ' bytes is over bus.max_envelope_size (' .. max .. ' bytes)'
      else
        local last = redis.call('GET', errs .. id)
        why = 'delivered ' .. deliveries .. ' times (bus.max_deliveries = ' .. maxd .. ') without an acknowledgement'
        if last then why = why .. '; last error: ' .. last end
      end
      poison(poison_key, key, id, fields, why, deliveries, now, size <= max)
      redis.call('XACK', key, group, id)
      redis.call('XDEL', key, id)
      redis.call('DEL', errs .. id)
      out[#out + 1] = {key, id, '~poisoned', tostring(deliveries)}
    else
      redis.call('XCLAIM', key, group, me, idle, id)
      local item = {key, id}
      for _, v in ipairs(fields) do item[#item + 1] = v end
      out[#out + 1] = item
    end
  end
end
return out
"
    ))
});

/// A handler failed on a competing entry. KEYS[1] the stream. ARGV: group, entry id, max
/// deliveries, poison stream, error key prefix, the error, error key ttl ms, consumer. Returns 1
/// when the entry moved to the poison stream, 0 when it stays for another delivery, -1 when it is
/// no longer this consumer's.
pub(super) static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{POISON_FN}{}",
        r"
local key = KEYS[1]
local group, id, maxd, poison_key = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local errs, err, ttl, me = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local p = redis.call('XPENDING', key, group, id, id, 1, me)
if #p == 0 then return -1 end
local deliveries = tonumber(p[1][4])
if deliveries < maxd then
  redis.call('SET', errs .. id, err, 'PX', ttl)
  return 0
end
local e = redis.call('XRANGE', key, id, id)
local fields = {}
if #e > 0 and e[1][2] then fields = e[1][2] end
poison(poison_key, key, id, fields,
  'delivered ' .. deliveries .. ' times (bus.max_deliveries = ' .. maxd .. '); last error: ' .. err,
  deliveries, now_ms(), true)
redis.call('XACK', key, group, id)
redis.call('XDEL', key, id)
redis.call('DEL', errs .. id)
return 1
"
    ))
});

/// Releases this consumer's pending entries of a competing stream at close: their idle time is
/// set to the claim timeout, so another instance takes them over at its next sweep instead of
/// a whole claim timeout later. KEYS[1] the stream. ARGV: group, consumer, claim timeout ms.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local key, group, me, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local n = 0
for _, p in ipairs(redis.call('XPENDING', key, group, '-', '+', 1000, me)) do
  redis.call('XCLAIM', key, group, me, 0, p[1], 'IDLE', idle, 'RETRYCOUNT', p[4], 'JUSTID')
  n = n + 1
end
return n
",
    )
});

/// Removes the consumer groups of departed instances from fan-out streams: a group none of
/// whose consumers read for longer than the retention. KEYS: the streams. ARGV: this instance
/// (never removed), retention ms. Returns the groups removed.
pub(super) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local me, retention = ARGV[1], tonumber(ARGV[2])
local gone = 0
local function field(list, name)
  for i = 1, #list, 2 do if list[i] == name then return list[i + 1] end end
end
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name = field(g, 'name')
      if name ~= me then
        local consumers = redis.call('XINFO', 'CONSUMERS', key, name)
        local freshest = nil
        for _, c in ipairs(consumers) do
          local idle = tonumber(field(c, 'idle'))
          if freshest == nil or idle < freshest then freshest = idle end
        end
        if freshest ~= nil and freshest > retention then
          redis.call('XGROUP', 'DESTROY', key, name)
          gone = gone + 1
        end
      end
    end
  end
end
return gone
",
    )
});
