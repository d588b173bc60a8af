// Package inspect reads who blocks whom on a PostgreSQL server right now, from pg_stat_activity, pg_locks and
// pg_blocking_pids, and renders it as a tree: the sessions holding locks at the roots, the sessions waiting
// for them underneath. It is the engine of `pgcc locks`.
package inspect

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is what [Take] needs: *pgxpool.Pool, *pgx.Conn and pgx.Tx all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Session is one client backend as the snapshot saw it.
type Session struct {
	PID         int32
	Application string
	User        string
	Database    string
	// State is pg_stat_activity.state: active, idle, idle in transaction, …
	State string
	// WaitEvent is "type:event" when the backend waits (Lock:transactionid, Lock:tuple, …), else empty.
	WaitEvent string
	// Waiting is how long the backend has waited for the lock it wants (zero when it waits for none).
	Waiting time.Duration
	// WaitingFor describes that lock: its mode and what it is on ("ShareLock on transactionid").
	WaitingFor string
	// InTransaction is how long the backend's current transaction has been open (zero outside one).
	InTransaction time.Duration
	// Query is the backend's current or last statement.
	Query string
	// BlockedBy lists the backends holding (or queued ahead for) the lock this one waits for.
	BlockedBy []int32
}

// Snapshot is the blocking state of the server at one moment.
type Snapshot struct {
	Taken time.Time
	// Sessions holds every client backend but the inspector's own when the snapshot was taken with all,
	// else only those that block or are blocked, ordered by pid.
	Sessions []Session
}

// snapshotSQL lists client backends with their lock wait and blockers. The lateral subquery picks the lock a
// backend waits for (a backend waits for at most one at a time).
const snapshotSQL = `
SELECT a.pid,
       coalesce(a.application_name, ''),
       coalesce(a.usename::text, ''),
       coalesce(a.datname::text, ''),
       coalesce(a.state, ''),
       CASE WHEN a.wait_event_type IS NULL THEN '' ELSE a.wait_event_type || ':' || a.wait_event END,
       coalesce(extract(epoch FROM now() - w.waitstart), 0)::float8,
       coalesce(w.mode || ' on ' || w.locktype || coalesce(' ' || w.rel, ''), ''),
       coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8,
       coalesce(a.query, ''),
       pg_blocking_pids(a.pid)
FROM pg_stat_activity a
LEFT JOIN LATERAL (
    SELECT l.waitstart, l.mode, l.locktype,
           CASE WHEN l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                THEN l.relation::regclass::text END AS rel
    FROM pg_locks l
    WHERE l.pid = a.pid AND NOT l.granted
    ORDER BY l.waitstart NULLS LAST
    LIMIT 1
) w ON true
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
ORDER BY a.pid`

// Take reads a snapshot through db. With all false, only sessions that block or wait for another are kept.
// ctx bounds the query.
func Take(ctx context.Context, db Querier, all bool) (*Snapshot, error) {
	rows, err := db.Query(ctx, snapshotSQL)
	if err != nil {
		return nil, fmt.Errorf("pgcc: read pg_stat_activity: %w", err)
	}
	sessions, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Session, error) {
		var s Session
		var waiting, inTx float64
		err := row.Scan(&s.PID, &s.Application, &s.User, &s.Database, &s.State, &s.WaitEvent, &waiting,
			&s.WaitingFor, &inTx, &s.Query, &s.BlockedBy)
		s.Waiting = seconds(waiting)
		s.InTransaction = seconds(inTx)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("pgcc: read pg_stat_activity: %w", err)
	}
	snap := &Snapshot{Taken: time.Now(), Sessions: sessions}
	if !all {
		snap.Sessions = involved(sessions)
	}
	return snap, nil
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond)
}

// involved keeps the sessions that wait for another or that another waits for.
func involved(sessions []Session) []Session {
	blocking := map[int32]bool{}
	for _, s := range sessions {
		for _, b := range s.BlockedBy {
			blocking[b] = true
		}
	}
	var out []Session
	for _, s := range sessions {
		if len(s.BlockedBy) > 0 || blocking[s.PID] {
			out = append(out, s)
		}
	}
	return out
}

// Node is a session in the blocking tree, with the sessions waiting for it as children.
type Node struct {
	Session  Session
	Children []*Node
	// Repeated is true when the session already appears elsewhere in the tree (it waits for several
	// sessions, or the sessions wait for each other in a cycle); its children are then not repeated.
	Repeated bool
}

// Tree arranges the snapshot's sessions by who blocks whom. Roots are sessions that block others and wait for
// nobody (the ones to look at first), then sessions not involved in any blocking; a cycle of waits, which
// PostgreSQL's deadlock detector breaks within deadlock_timeout, is rooted at its lowest pid.
func (s *Snapshot) Tree() []*Node {
	byPID := map[int32]Session{}
	waiters := map[int32][]int32{}
	for _, sess := range s.Sessions {
		byPID[sess.PID] = sess
	}
	for _, sess := range s.Sessions {
		for _, b := range sess.BlockedBy {
			waiters[b] = append(waiters[b], sess.PID)
		}
	}
	seen := map[int32]bool{}
	var build func(pid int32) *Node
	build = func(pid int32) *Node {
		sess, ok := byPID[pid]
		if !ok {
			sess = Session{PID: pid, State: "(not visible)"}
		}
		n := &Node{Session: sess}
		if seen[pid] {
			n.Repeated = true
			return n
		}
		seen[pid] = true
		kids := slices.Clone(waiters[pid])
		slices.Sort(kids)
		for _, k := range kids {
			n.Children = append(n.Children, build(k))
		}
		return n
	}
	var roots []*Node
	blockerPIDs := make([]int32, 0, len(waiters))
	for pid := range waiters {
		blockerPIDs = append(blockerPIDs, pid)
	}
	slices.Sort(blockerPIDs)
	// Blockers that wait for nobody first.
	for _, pid := range blockerPIDs {
		if len(byPID[pid].BlockedBy) == 0 {
			roots = append(roots, build(pid))
		}
	}
	// Whatever is left is in a cycle or not involved at all.
	for _, sess := range s.Sessions {
		if !seen[sess.PID] {
			roots = append(roots, build(sess.PID))
		}
	}
	return roots
}

// Render writes the snapshot as a tree, one session a line, queries cut to width characters (0: no limit).
func (s *Snapshot) Render(w io.Writer, width int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ", s.Taken.Format(time.DateTime))
	blocked := 0
	for _, sess := range s.Sessions {
		if len(sess.BlockedBy) > 0 {
			blocked++
		}
	}
	if blocked == 0 {
		b.WriteString("no session is waiting for a lock\n")
	} else {
		fmt.Fprintf(&b, "%d session(s) waiting for a lock\n", blocked)
	}
	var walk func(n *Node, prefix string, last, root bool)
	walk = func(n *Node, prefix string, last, root bool) {
		branch, next := "", ""
		if !root {
			branch, next = "├─ ", "│  "
			if last {
				branch, next = "└─ ", "   "
			}
		}
		b.WriteString(prefix + branch + describe(n, width) + "\n")
		for i, c := range n.Children {
			walk(c, prefix+next, i == len(n.Children)-1, false)
		}
	}
	for _, r := range s.Tree() {
		walk(r, "", true, true)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func describe(n *Node, width int) string {
	s := n.Session
	parts := []string{fmt.Sprintf("pid %d", s.PID)}
	if s.Application != "" {
		parts = append(parts, "app="+s.Application)
	}
	if s.User != "" {
		parts = append(parts, "user="+s.User)
	}
	if s.State != "" {
		parts = append(parts, s.State)
	}
	if s.InTransaction > 0 {
		parts = append(parts, "tx open "+s.InTransaction.String())
	}
	if s.WaitingFor != "" {
		parts = append(parts, fmt.Sprintf("waiting %s for %s", s.Waiting, s.WaitingFor))
	}
	if n.Repeated {
		parts = append(parts, "(shown above)")
		return strings.Join(parts, "  ")
	}
	q := strings.Join(strings.Fields(s.Query), " ")
	if width > 0 && len(q) > width {
		q = q[:width-1] + "…"
	}
	if q != "" {
		parts = append(parts, fmt.Sprintf("%q", q))
	}
	return strings.Join(parts, "  ")
}
