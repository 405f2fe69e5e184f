-- The torture corpus route with branch routes and a failure route: every request goes to the first
-- target (@FWD1@), its branch marked "X-Torture-Branch: first" by a branch route; when that target answers
-- 486 the failure route sends the request to the second one (@FWD2@), marked "second". Responses go to the source port (RFC 3581).
-- The test writes the two ports in place of the markers.

local FIRST = "sip:127.0.0.1:@FWD1@"
local SECOND = "sip:127.0.0.1:@FWD2@"

function ksr_request_route()
  KSR.force_rport()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
    KSR.sl.sl_send_reply(200, "Keepalive")
    return
  end
  KSR.setdsturi(FIRST)
  KSR.tm.t_on_branch("mark_first")
  KSR.tm.t_on_failure("second_target")
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
end

function mark_first()
  KSR.hdr.append("X-Torture-Branch: first\r\n")
end

function mark_second()
  KSR.hdr.append("X-Torture-Branch: second\r\n")
end

function second_target()
  if KSR.tm.t_is_canceled() > 0 then return end
  if KSR.tm.t_check_status("486") > 0 then
    KSR.setdsturi(SECOND)
    KSR.tm.t_on_branch("mark_second")
    KSR.tm.t_relay()
  end
end
