-- Serial hunting: the desk phone first, then the mobile, then voicemail.
-- Each stage is a q group; t_next_contacts moves to the next group when a stage fails.

local VOICEMAIL = "sip:voicemail@vm.example.com"

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() end
    return
  end
  if not KSR.is_INVITE() then
    KSR.tm.t_relay()
    return
  end
  local user = KSR.kx.get_ruser()
  KSR.rr.record_route()
  KSR.seturi("sip:" .. user .. "@desk.example.com")
  KSR.corex.append_branch("sip:" .. user .. "@mobile.example.com", 0.5)
  KSR.corex.append_branch(VOICEMAIL, 0.1)
  KSR.tm.t_load_contacts()
  KSR.tm.t_next_contacts()
  KSR.tm.t_on_failure("next_stage")
  KSR.tm.t_set_fr(60000, 15000)
  KSR.tm.t_relay()
end

function next_stage()
  if KSR.tm.t_is_canceled() > 0 then return end
  if KSR.tm.t_next_contacts() > 0 then
    KSR.tm.t_on_failure("next_stage")
    KSR.tm.t_relay()
  end
end
