package lockwait

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// blockerColumns reads a session out of pg_stat_activity a, with the database clock for HeldFor.
const blockerColumns = `a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), coalesce(a.query, ''),
	a.xact_start, coalesce(extract(epoch FROM clock_timestamp() - a.xact_start) * 1e6, 0)::bigint,
	coalesce(a.wait_event_type || ':' || a.wait_event, '')`

// rowHolders selects the sessions holding one of the transaction ids $2 that also hold a lock on the table
// $3, other than the backend $1.
const rowHolders = `SELECT ` + blockerColumns + ` FROM pg_stat_activity a WHERE a.pid <> $1 AND a.pid IN (
	SELECT l.pid FROM pg_locks l WHERE l.locktype = 'transactionid' AND l.granted AND l.transactionid::text = ANY($2::text[]))
	AND a.pid IN (SELECT r.pid FROM pg_locks r WHERE r.locktype = 'relation' AND r.granted AND r.relation = to_regclass($3))
	ORDER BY a.xact_start`

// RowBlockers finds the sessions holding row locks on the keys of ks. A locked row's xmax is either the
// transaction id of its one locker, or a MultiXact id standing for several (rows share-locked by several
// transactions, or key-share-locked by foreign-key checks and then locked again): those are resolved with
// pg_get_multixact_members. The holders are the sessions holding one of those transaction ids and a lock
// on the table itself (which keeps a stale number from matching an unrelated transaction). self, the backend
// of the failed request, is left out. The second result says what could not be resolved, if anything.
func RowBlockers(ctx context.Context, db pgcc.DBTX, self int, ks KeySet) ([]pgcc.Blocker, error) {
	var b strings.Builder
	args := ks.WriteSelect(&b, []string{"xmax"}, 1)
	return RowBlockersFrom(ctx, db, self, ks.ident, b.String(), args)
}

// RowBlockersFrom is [RowBlockers] for the rows of the table quoted as ident that the statement xmaxSQL,
// with args, reads the xmax column of.
func RowBlockersFrom(ctx context.Context, db pgcc.DBTX, self int, ident, xmaxSQL string, args []any) ([]pgcc.Blocker, error) {
	rows, err := db.Query(ctx, `SELECT DISTINCT x.xmax::text, EXISTS (SELECT FROM pg_locks l
		WHERE l.locktype = 'transactionid' AND l.granted AND l.transactionid = x.xmax)
		FROM (`+xmaxSQL+`) x WHERE x.xmax::text <> '0'`, args...)
	if err != nil {
		return nil, err
	}
	type xmax struct {
		id   string
		live bool
	}
	found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (xmax, error) {
		var x xmax
		err := row.Scan(&x.id, &x.live)
		return x, err
	})
	if err != nil {
		return nil, err
	}
	var xids []string
	var unresolved []error
	for _, x := range found {
		if x.live {
			xids = append(xids, x.id)
			continue
		}
		// Not a running transaction: a MultiXact, or a locker that has finished since.
		members, err := multixactMembers(ctx, db, x.id)
		if err != nil {
			unresolved = append(unresolved, fmt.Errorf("xmax %s: %w", x.id, err))
			continue
		}
		xids = append(xids, members...)
	}
	var diag error
	if len(unresolved) > 0 {
		diag = fmt.Errorf("pgcc: could not resolve the lockers of every row (a MultiXact whose members could not be read, or a locker that has finished): %w", errors.Join(unresolved...))
	}
	if len(xids) == 0 {
		return nil, diag
	}
	rows, err = db.Query(ctx, rowHolders, int64(self), xids, ident)
	blockers, err := collectBlockers(rows, err)
	if err != nil {
		return nil, errors.Join(err, diag)
	}
	if len(blockers) > 0 {
		// The holders were found; a number that was not a MultiXact does not matter.
		diag = nil
	}
	return blockers, diag
}

func multixactMembers(ctx context.Context, db pgcc.DBTX, id string) ([]string, error) {
	rows, err := db.Query(ctx, "SELECT m.xid::text FROM pg_get_multixact_members($1::text::xid) m", id)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// AdvisoryBlockers finds the sessions holding the advisory lock key in the current database. pg_locks shows a
// bigint key as classid (high 32 bits) and objid (low 32 bits) with objsubid 1.
func AdvisoryBlockers(ctx context.Context, db pgcc.DBTX, self int, key pgcc.AdvisoryKey) ([]pgcc.Blocker, error) {
	u := uint64(key)
	rows, err := db.Query(ctx, "SELECT "+blockerColumns+` FROM pg_stat_activity a WHERE a.pid <> $1 AND a.pid IN (
		SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		AND l.classid = $2::bigint::oid AND l.objid = $3::bigint::oid
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
		ORDER BY a.xact_start`, int64(self), int64(u>>32), int64(u&0xffffffff))
	return collectBlockers(rows, err)
}

func collectBlockers(rows pgx.Rows, err error) ([]pgcc.Blocker, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgcc.Blocker, error) {
		var b pgcc.Blocker
		var pid int32
		var start *time.Time
		var heldMicros int64
		if err := row.Scan(&pid, &b.Application, &b.State, &b.Query, &start, &heldMicros, &b.WaitEvent); err != nil {
			return b, err
		}
		b.PID = int(pid)
		if start != nil {
			b.XactStart = *start
		}
		b.HeldFor = time.Duration(heldMicros) * time.Microsecond
		return b, nil
	})
}
