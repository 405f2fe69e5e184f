-- Flood protection and limits end to end: OPTIONS answered at once; anything else forked to three
-- branches (the Request-URI twice more) in parallel, so that Max-Breadth applies.
function ksr_request_route()
  if KSR.is_OPTIONS() then
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  local ruri = KSR.pv.get("$ru")
  KSR.corex.append_branch(ruri)
  KSR.corex.append_branch(ruri)
  KSR.tm.t_relay()
end
