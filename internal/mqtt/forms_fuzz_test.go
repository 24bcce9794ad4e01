package mqtt

import (
	"strings"
	"testing"
)

// FuzzForms: the topic forms authorized for a SUBSCRIBE filter and a
// PUBLISH topic (SubscribedForms, PublishedForms) are what each broker
// acts on: the filter a standard broker matches (SubscribedFilter) last,
// and, after an EMQX prefix, the filter EMQX delivers; the topic as sent
// last and, for EMQX's $delayed/{seconds}/{topic}, each topic it is
// published again to, innermost first; each form a valid filter or topic
// when the one sent was, and no more forms than the prefixes sent.
func FuzzForms(f *testing.F) {
	for _, s := range []string{
		"a/b", "$share/g/a/+", "$share/g/$queue/a/#", "$queue/a", "$exclusive/a/b", "$queue/", "$share/g",
		"$share//a", "$delayed/10/a/b", "$delayed/10/$delayed/5/a", "$delayed/10/", "$delayed//a", "$delayed/x",
		"$queue/$exclusive/a", "#", "+/+", "$SYS/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sub := SubscribedForms(s)
		std := SubscribedFilter(s)
		if len(sub) == 0 || sub[len(sub)-1] != std || !strings.HasSuffix(s, std) {
			t.Fatalf("SubscribedForms(%q) = %q: the filter a standard broker matches (%q) is not last", s, sub, std)
		}
		emqx := std
		for _, p := range emqxSubscribePrefixes {
			if rest, ok := strings.CutPrefix(std, p); ok && rest != "" {
				emqx = rest
			}
		}
		if emqx != std && (len(sub) != 2 || sub[0] != emqx) || emqx == std && len(sub) != 1 {
			t.Fatalf("SubscribedForms(%q) = %q: want what EMQX delivers (%q) first", s, sub, emqx)
		}
		if ValidTopicFilter(s) == nil {
			for _, fm := range sub {
				// Valid as the filter of a shared subscription: levels
				// only ("$share/" is a literal filter there).
				if ValidTopicFilter("$share/g/"+fm) != nil {
					t.Fatalf("SubscribedForms(%q) holds %q, not a valid filter", s, fm)
				}
			}
		}

		pub := PublishedForms(s)
		if len(pub) == 0 || pub[len(pub)-1] != s || len(pub) > strings.Count(s, "$delayed/")+1 {
			t.Fatalf("PublishedForms(%q) = %q", s, pub)
		}
		for i := 0; i+1 < len(pub); i++ {
			rest, ok := strings.CutPrefix(pub[i+1], "$delayed/")
			secs, topic, _ := strings.Cut(rest, "/")
			if !ok || topic != pub[i] || topic == "" || strings.Contains(secs, "/") {
				t.Fatalf("PublishedForms(%q) = %q: %q is not $delayed/{seconds}/%q", s, pub, pub[i+1], pub[i])
			}
		}
		if rest, ok := strings.CutPrefix(pub[0], "$delayed/"); ok {
			if _, topic, ok := strings.Cut(rest, "/"); ok && topic != "" {
				t.Fatalf("PublishedForms(%q) = %q: EMQX delivers %q, missing", s, pub, topic)
			}
		}
		if ValidTopicName(s) == nil {
			for _, fm := range pub {
				if ValidTopicName(fm) != nil {
					t.Fatalf("PublishedForms(%q) holds %q, not a valid topic", s, fm)
				}
			}
		}
	})
}
