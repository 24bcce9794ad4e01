package punch

import "time"

// refusalLogEvery bounds the log lines about refused probes: a flood of
// forged ones is counted in Stats and logged once per interval.
const refusalLogEvery = time.Minute

// noteRefusalLocked logs a refusal that says someone forges, replays or
// sends what was not asked for (not noise: datagrams that are no probe, a
// late probe of an ended session, our own probe come back), at most once
// per refusalLogEvery, with the counts so far.
func (p *Puncher) noteRefusalLocked(reason, from string) {
	now := time.Now()
	if !p.loggedAt.IsZero() && now.Sub(p.loggedAt) < refusalLogEvery {
		return
	}
	p.loggedAt = now
	s := p.stats
	p.log.Warn("punch: refused a probe or introduction (further ones are only counted for a minute)",
		"reason", reason, "from", from, "badMAC", s.BadMAC, "replayed", s.Replayed,
		"unsolicited", s.Unsolicited, "malformed", s.Malformed, "introReplayed", s.IntroReplayed,
		"candidateRefused", s.CandidateRefused, "overBudget", s.OverBudget)
}
