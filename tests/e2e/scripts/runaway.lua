-- A route that never ends for INVITEs to the user "loop" (the instruction budget must stop it) and
-- relays every other request to its Request-URI.
function ksr_request_route()
  if KSR.is_INVITE() and KSR.pv.get("$rU") == "loop" then
    while true do end
  end
  KSR.tm.t_relay()
end
