package quota

import (
	"slices"
	"time"
)

// notify hands c to the notifier, if any.
func (s *Service) notify(c Change) {
	if s.notifier != nil {
		s.notifier.Notify(c)
	}
}

// notifyUsage tells of amount counted on key by action (consumed or
// committed), and of the thresholds the count crossed.
func (s *Service) notifyUsage(key CounterKey, action, reservation string, amount int64, t Tally, limit int64, now time.Time) {
	if s.notifier == nil {
		return
	}
	c := Change{Type: ChangeUsage, Action: action, Subject: key.Subject, Meter: key.Meter, Amount: amount,
		Reservation: reservation, Used: t.Used, Reserved: t.Reserved, Limit: limit, Remaining: remaining(limit, t), At: Time{now}}
	s.notify(c)
	for _, pct := range crossed(t.Used-amount, t.Used, limit) {
		c.Type, c.Action, c.Threshold = ChangeThreshold, "crossed", pct
		s.notify(c)
	}
}

// notifyHold tells of a reservation's change (reserved, released,
// expired, committed).
func (s *Service) notifyHold(key CounterKey, action, id string, amount int64, t Tally, limit int64, now time.Time) {
	s.notify(Change{Type: ChangeReservation, Action: action, Subject: key.Subject, Meter: key.Meter, Amount: amount,
		Reservation: id, Used: t.Used, Reserved: t.Reserved, Limit: limit, Remaining: remaining(limit, t), At: Time{now}})
}

// notifyView tells of a change to a subject's meters (all of them, or
// those named), with the state of each after it.
func (s *Service) notifyView(typ, action string, v *SubjectView, meters ...string) {
	if s.notifier == nil {
		return
	}
	now := Time{s.now()}
	for _, m := range v.Meters {
		if len(meters) > 0 && !slices.Contains(meters, m.Meter) {
			continue
		}
		s.notify(Change{Type: typ, Action: action, Subject: v.Subject, Meter: m.Meter, Used: m.Used, Reserved: m.Reserved,
			Limit: m.Limit, Remaining: m.Remaining, Plan: v.Plan, At: now})
	}
}
