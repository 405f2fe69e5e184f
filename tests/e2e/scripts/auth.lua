-- Digest authentication in front of the registrar and of calls, in the shape of Kamailio's example
-- configuration: REGISTER and new requests must authenticate against the subscriber table (realm = the
-- To domain for REGISTER, the From domain otherwise); credentials are consumed before relaying.

local function relay()
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
  KSR.x.exit()
end

local function authenticate()
  if KSR.is_ACK() or KSR.is_CANCEL() then return end
  local realm = "$fd"
  if KSR.is_REGISTER() then realm = "$td" end
  local rc = KSR.auth_db.auth_check(realm, "subscriber", 1)
  if rc < 0 then
    KSR.auth.auth_challenge(realm, 0)
    KSR.x.exit()
  end
  KSR.auth.consume_credentials()
end

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 or not KSR.is_myself_ruri() then relay() end
    if KSR.is_ACK() then KSR.x.exit() end
    KSR.sl.sl_send_reply(404, "Not here")
    return
  end
  if KSR.is_CANCEL() then relay() end
  authenticate()
  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end
  KSR.rr.record_route()
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  relay()
end
