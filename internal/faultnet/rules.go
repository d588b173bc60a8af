package faultnet

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Action is what a [Rule] does to the statement it matched and to the connection that sent it.
type Action int

const (
	// ResetInstead resets the connection (an RST to the client and to the server) in place of sending the
	// statement: the server certainly never saw it. Messages the client sent before it in the same flight are
	// delivered first.
	ResetInstead Action = iota + 1

	// LoseReply delivers the statement, lets the server run it, drops everything the server answers from then
	// on, and resets the client's connection once the server's ReadyForQuery for it has arrived (the server's
	// side is closed normally). It is the "COMMIT reached the server, the answer never came back" fault: when
	// the client sees the error the statement has completed. Its reply is the server's answer up to the
	// ReadyForQuery that follows the statement: the Query itself, or the first Sync after a Parse.
	LoseReply

	// HangAfter delivers the statement and then holds the connection in both directions: the server runs it,
	// its answer is held back, and nothing the client sends reaches the server, until [Proxy.Resume]. The
	// sockets stay open. (After a Parse, the client's messages up to the next Sync are delivered too.) A
	// Resume called after the rule fired ends the hold even if the answer had not yet reached the proxy.
	HangAfter
)

// String returns the action's name.
func (a Action) String() string {
	switch a {
	case ResetInstead:
		return "ResetInstead"
	case LoseReply:
		return "LoseReply"
	case HangAfter:
		return "HangAfter"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Rule is a fault tied to statements, added with [Proxy.OnQuery]. Its methods are safe for concurrent use.
type Rule struct {
	p      *Proxy
	match  func(sql string) bool
	action Action

	// Guarded by p.mu.
	left    int // firings left; -1 for no limit
	prob    float64
	fired   int
	removed bool
}

// RuleOption adjusts a [Rule] when it is added.
type RuleOption func(*Rule)

// Times makes the rule fire on n matching statements (one is the default). It panics unless n ≥ 1.
func Times(n int) RuleOption {
	if n < 1 {
		panic(fmt.Sprintf("faultnet: Times(%d): a rule fires at least once; use Always for no limit", n))
	}
	return func(r *Rule) { r.left = n }
}

// Always makes the rule fire on every matching statement until it is removed.
func Always() RuleOption { return func(r *Rule) { r.left = -1 } }

// Probability makes the rule fire on a matching statement with probability p (drawn independently for each
// statement), within its limit of firings. It panics unless 0 < p ≤ 1.
func Probability(p float64) RuleOption {
	if !(p > 0 && p <= 1) {
		panic(fmt.Sprintf("faultnet: Probability(%v): want 0 < p ≤ 1", p))
	}
	return func(r *Rule) { r.prob = p }
}

// OnQuery adds a rule: when a client sends a statement for which match returns true, in a simple Query or a
// Parse message, the rule fires and action is applied to it. By default it fires once; see [Times], [Always]
// and [Probability]. Rules are tried in the order they were added, and the first that fires decides. match is
// called on the proxy's goroutines, concurrently for different connections, and must not call the proxy's
// methods. A Query message holding several statements is matched as one string. A statement pgx has prepared
// already is executed by name, without its text, and no rule sees it; one it prepares is matched in the
// prepare round trip (Parse, Describe, Sync), before it runs. Rules therefore see every statement under
// pgx.QueryExecModeExec and QueryExecModeSimpleProtocol, and statements without arguments, which pgx always
// sends as simple Queries (tx.Commit among them).
func (p *Proxy) OnQuery(match func(sql string) bool, action Action, opts ...RuleOption) *Rule {
	if match == nil {
		panic("faultnet: OnQuery with a nil match function")
	}
	if action < ResetInstead || action > HangAfter {
		panic(fmt.Sprintf("faultnet: OnQuery with unknown %v", action))
	}
	r := &Rule{p: p, match: match, action: action, left: 1, prob: 1}
	for _, o := range opts {
		o(r)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, r)
	p.ruleCount.Store(int64(len(p.rules)))
	return r
}

// Fired returns how many times the rule has fired.
func (r *Rule) Fired() int {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.fired
}

// Remove stops the rule from firing again. A fault it already set in motion runs its course.
func (r *Rule) Remove() {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	r.removed = true
	for i, x := range r.p.rules {
		if x == r {
			r.p.rules = append(r.p.rules[:i:i], r.p.rules[i+1:]...)
			break
		}
	}
	r.p.ruleCount.Store(int64(len(r.p.rules)))
}

// fire returns the action of the first rule that matches sql and fires, or 0, with the proxy's hang generation
// at that moment. Deciding and counting happen under the proxy's lock, so a rule limited to n firings fires
// exactly n times however many connections race.
func (p *Proxy) fire(sql string) (Action, uint64) {
	p.mu.Lock()
	rules := p.rules // never modified in place: Remove and OnQuery build new slices or append past len
	p.mu.Unlock()
	for _, r := range rules {
		if !r.match(sql) {
			continue
		}
		p.mu.Lock()
		ok := !r.removed && r.left != 0 && (r.prob >= 1 || rand.Float64() < r.prob)
		if ok {
			r.fired++
			if r.left > 0 {
				r.left--
			}
		}
		gen := p.gen
		p.mu.Unlock()
		if ok {
			return r.action, gen
		}
	}
	return 0, 0
}

// IsCommit reports whether sql commits a transaction: COMMIT, COMMIT WORK, COMMIT TRANSACTION or END, in any
// case, with surrounding space and a trailing semicolon ignored. pgx commits with "commit". Use it as the
// match of [Proxy.OnQuery].
func IsCommit(sql string) bool {
	s := strings.ToLower(strings.Join(strings.Fields(strings.TrimSuffix(strings.TrimSpace(sql), ";")), " "))
	switch s {
	case "commit", "commit work", "commit transaction", "end", "end work", "end transaction":
		return true
	}
	return false
}

// SQLHasPrefix returns a match function for [Proxy.OnQuery] that accepts statements beginning with prefix,
// ignoring case and leading space.
func SQLHasPrefix(prefix string) func(sql string) bool {
	prefix = strings.ToLower(prefix)
	return func(sql string) bool {
		return strings.HasPrefix(strings.ToLower(strings.TrimSpace(sql)), prefix)
	}
}
