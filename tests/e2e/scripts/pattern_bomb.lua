-- A route that runs a backtracking Lua pattern on a value the sender chooses (the Request-URI user);
-- OPTIONS are answered at once.
function ksr_request_route()
  if KSR.is_OPTIONS() then
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  local found = string.find(string.rep(KSR.pv.get("$rU"), 40), "(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)(.-)b")
  if found then
    KSR.sl.sl_send_reply(404, "Found")
    return
  end
  KSR.sl.sl_send_reply(403, "Nothing")
end
