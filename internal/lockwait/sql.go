package lockwait

import (
	"context"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// WriteColumns writes cols quoted and separated by commas.
func WriteColumns(b *strings.Builder, cols []string) {
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgx.Identifier{c}.Sanitize())
	}
}

// WriteKeyCondition writes the predicate matching keys on keyCols, numbering parameters from first, and
// returns the arguments. One key of one column is matched with = $n, several with = ANY($n) (one statement
// text per table either way, so pgx's statement cache prepares each once), multi-column keys with a
// row-value IN list.
func WriteKeyCondition(b *strings.Builder, keyCols []string, keys []pgcc.Key, first int) []any {
	if len(keys) == 0 {
		b.WriteString("false")
		return nil
	}
	if len(keyCols) == 1 && len(keys) == 1 {
		b.WriteString(pgx.Identifier{keyCols[0]}.Sanitize())
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(first))
		return []any{keys[0][0]}
	}
	if len(keyCols) == 1 {
		b.WriteString(pgx.Identifier{keyCols[0]}.Sanitize())
		b.WriteString(" = ANY($")
		b.WriteString(strconv.Itoa(first))
		b.WriteString(")")
		vals := make([]any, len(keys))
		for i, k := range keys {
			vals[i] = k[0]
		}
		return []any{vals}
	}
	b.WriteString("(")
	WriteColumns(b, keyCols)
	b.WriteString(") IN (")
	args := make([]any, 0, len(keys)*len(keyCols))
	n := first
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(")
		for j, v := range k {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("$")
			b.WriteString(strconv.Itoa(n))
			n++
			args = append(args, v)
		}
		b.WriteString(")")
	}
	b.WriteString(")")
	return args
}

// RowBlockers finds the sessions holding row locks on keys of table (quoted as ident): those whose
// transaction id is the xmax of one of the rows (the transaction that locked or updated it) and that hold a
// lock on the table itself. The second condition keeps a multixact xmax (rows share-locked by several
// transactions) from matching an unrelated transaction by number; such rows report no blockers. self is the
// backend of the failed request, left out.
func RowBlockers(ctx context.Context, db pgcc.DBTX, self int, ident string, keyCols []string, keys []pgcc.Key) ([]pgcc.Blocker, error) {
	var b strings.Builder
	b.WriteString("SELECT ")
	b.WriteString(blockerColumns)
	b.WriteString(` FROM pg_stat_activity a WHERE a.pid <> $1 AND a.pid IN (
	SELECT l.pid FROM pg_locks l WHERE l.locktype = 'transactionid' AND l.granted AND l.transactionid IN (
		SELECT t.xmax FROM `)
	b.WriteString(ident)
	b.WriteString(" t WHERE ")
	args := WriteKeyCondition(&b, keyCols, keys, 3)
	b.WriteString(`)
	) AND a.pid IN (SELECT r.pid FROM pg_locks r WHERE r.locktype = 'relation' AND r.granted AND r.relation = to_regclass($2))
	ORDER BY a.xact_start`)
	rows, err := db.Query(ctx, b.String(), append([]any{int64(self), ident}, args...)...)
	return collectBlockers(rows, err)
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
