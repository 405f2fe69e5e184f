-- Block callers by source address or From user, with a table that forgets entries on its own.
-- Sources that send more than 20 requests are blocked for the lifetime of a "blocked" entry.

local LIMIT = 20

function ksr_request_route()
  local src = KSR.kx.get_srcip()
  local caller = KSR.kx.gete_fuser()
  if KSR.htable.sht_get("blocked", src) ~= nil or KSR.htable.sht_get("blocked", "user:" .. caller) ~= nil then
    KSR.warn("blocked request from " .. src)
    KSR.sl.sl_send_reply(403, "Forbidden")
    KSR.x.exit()
  end
  if KSR.htable.sht_inc("seen", src) > LIMIT then
    KSR.htable.sht_seti("blocked", src, 1)
    KSR.sl.sl_send_reply(403, "Forbidden")
    KSR.x.exit()
  end
  KSR.hdr.append("X-Screened: yes\r\n")
  KSR.tm.t_relay()
end
