-- A PBX front: local users register here; calls to numbers go out through an upstream SIP trunk that
-- trioproxy registers to ([[uac.registrations]] in the configuration) and that authenticates them.
--   * REGISTER from local users: saved in the location service.
--   * a call from the trunk to our registration (R-URI user = its l_uuid): uac_reg_lookup turns it back
--     into the local user (l_username@l_domain), then to that user's registered contacts.
--   * a call to anything else goes to the trunk, From rewritten to our account there; when the trunk
--     answers 401/407, the failure route adds the credentials (uac_auth) and sends it again, once.
-- Needs: [[uac.registrations]] with l_uuid, l_username, l_domain, r_username, r_domain, realm,
-- auth_password; TRUNK below is where calls go (the provider's proxy).

local TRUNK = "sip:trunk.example.net"
local ACCOUNT = "sip:pbx@trunk.example.net"

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end

  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then
      KSR.tm.t_relay()
    end
    return
  end

  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 or KSR.is_ACK() then
      KSR.tm.t_relay()
    else
      KSR.sl.sl_send_reply(404, "Not here")
    end
    return
  end

  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end

  KSR.rr.record_route()

  -- From the trunk, to our registration: the local user it stands for.
  if KSR.uac.uac_reg_lookup("$rU", "$ru") > 0 then
    if KSR.registrar.lookup("location") < 0 then
      KSR.sl.sl_send_reply(404, "Not Found")
      return
    end
    KSR.tm.t_relay()
    return
  end

  -- A local user we know: straight to their phones.
  if KSR.is_myself_ruri() and KSR.registrar.lookup("location") > 0 then
    KSR.tm.t_relay()
    return
  end

  -- Anything else leaves through the trunk, as our account there.
  if KSR.is_INVITE() then
    KSR.uac.uac_replace_from("", ACCOUNT)
    KSR.pv.sets("$du", TRUNK)
    KSR.tm.t_on_failure("trunk_auth")
    KSR.tm.t_relay()
    return
  end
  KSR.sl.sl_send_reply(404, "Not Found")
end

function trunk_auth()
  if KSR.tm.t_is_canceled() > 0 then
    return
  end
  if KSR.tm.t_check_status("401|407") > 0 and KSR.pv.get("$var(auth_sent)") ~= 1 then
    if KSR.uac.uac_auth() > 0 then
      KSR.pv.seti("$var(auth_sent)", 1)
      KSR.pv.sets("$du", TRUNK)
      KSR.tm.t_relay()
    end
  end
end
