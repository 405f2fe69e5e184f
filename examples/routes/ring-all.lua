-- Ring all: every registered contact of the called user rings at once (parallel forking).
-- Calls to a user with no registration get 480; unanswered calls end in 408 after 30 s.

function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() return end
    KSR.sl.sl_send_reply(404, "Not here")
    return
  end
  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end
  if KSR.is_INVITE() then KSR.rr.record_route() end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(480, "Temporarily Unavailable")
    return
  end
  -- lookup made the best contact the R-URI and appended the others: t_relay forks to all of them
  KSR.tm.t_set_fr(30000, 5000)
  KSR.tm.t_relay()
end
