-- One concurrent call per caller (dialog profile "caller" keyed by the From user): the call over the limit
-- gets 486. Every INVITE's dialog is managed, so every call (answered or not) gets a CDR.
function ksr_request_route()
  if KSR.siputils.has_totag() > 0 then
    KSR.rr.loose_route()
    KSR.tm.t_relay()
    return
  end
  if KSR.is_INVITE() then
    KSR.dialog.dlg_manage()
    KSR.dialog.get_profile_size("caller", "$fU", "$var(active)")
    if KSR.pv.get("$var(active)") > 0 then
      KSR.sl.sl_send_reply(486, "Busy Here")
      return
    end
    KSR.dialog.set_dlg_profile("caller", "$fU")
    KSR.rr.record_route()
  end
  KSR.tm.t_relay()
end
