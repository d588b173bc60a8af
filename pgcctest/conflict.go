package pgcctest

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
)

// ConflictOnce forces one optimistic conflict on the row of table with key: right after the next statement
// sent through p that reads table (a SELECT naming it, such as Table.Get's) has completed, and before the
// caller's next statement, another connection reads the row, applies change and writes it back with
// table.Update, committed. The caller then holds a version that is no longer the row's: its Table.Update
// returns a *pgcc.ConflictError, and Table.Modify reads again and retries exactly once.
//
// change must alter a value (an Update that writes the stored values keeps the version); a nil change gives
// the row a new version without altering it (Table.ForceIncrement). The concurrent write fails, and the
// failure is reported through [FaultPool.HookErr], if the caller's transaction holds a lock on the row
// (SELECT … FOR UPDATE): that is a pessimistic path, which such a write cannot interleave with.
func ConflictOnce[T any](p *FaultPool, table *repo.Table[T], key pgcc.Key, change func(row *T)) *Fault {
	return p.AfterStatement(1, func(ctx context.Context, other *pgxpool.Pool) error {
		return pgx.BeginFunc(ctx, other, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '2s'"); err != nil {
				return err
			}
			row, err := table.Get(ctx, tx, key)
			if err != nil {
				return err
			}
			if change == nil {
				return table.ForceIncrement(ctx, tx, &row)
			}
			change(&row)
			return table.Update(ctx, tx, &row)
		})
	}, Matching(reads(table.Identifier().Sanitize())))
}

// reads returns a match function for statements that read the table quoted as name.
func reads(name string) func(sql string) bool {
	return func(sql string) bool {
		s := strings.TrimSpace(sql)
		return len(s) >= 6 && strings.EqualFold(s[:6], "SELECT") && strings.Contains(s, name)
	}
}
