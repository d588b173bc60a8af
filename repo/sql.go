package repo

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// maxIdentifierLen is PostgreSQL's NAMEDATALEN - 1: a longer name would be truncated silently by the server,
// so that two different names could refer to the same column.
const maxIdentifierLen = 63

// maxParams is the most parameters one statement of the extended protocol can carry.
const maxParams = 65535

// maxBulkRows bounds the rows of one bulk statement. Its rows are a chain of UNION ALL branches (see
// typedRows), which PostgreSQL's parser walks recursively: some 16,000 branches exceed the default
// max_stack_depth of 2 MB. A thousand keeps far from it and costs little: a batch of 10,000 rows is ten
// statements in one transaction.
const maxBulkRows = 1000

// bulkRows is how many rows of width columns one bulk statement carries.
func bulkRows(width int) int { return min(maxBulkRows, maxParams/width) }

// xminExpr reads the xmin system column as a bigint. xmin is of type xid, which has no cast to a number; its
// text form is the decimal transaction id.
const xminExpr = "xmin::text::bigint"

// desc is a table description reduced to names and positions: what the SQL is built from. It holds no
// reflection, so the builder can be tested (and fuzzed) on names alone.
type desc struct {
	schema string
	table  string
	kind   VersionKind
	// cols names every mapped column, in struct order. For VersionXmin the version column is "xmin".
	cols []string
	// key, version and defaults are positions in cols.
	key      []int
	version  int
	defaults []int
}

// statements is the SQL a table runs, built once by [NewTable].
type statements struct {
	get    string // SELECT cols FROM t WHERE key
	insert string // INSERT INTO t (cols) VALUES (…) [RETURNING defaults, version]
	update string // UPDATE t SET cols, version bump WHERE key AND version [RETURNING version]
	delete string // DELETE FROM t WHERE key AND version
	force  string // UPDATE t SET version bump WHERE key AND version [RETURNING version]
	probe  string // SELECT version FROM t WHERE key FOR SHARE

	// Positions in cols of each statement's parameters, in parameter order.
	insertArgs []int
	insertRet  []int // the columns INSERT's RETURNING fills, version included for VersionXmin
	updateSet  []int // the columns UPDATE sets: neither key nor version
}

// checkName rejects, with an error matching [pgcc.ErrInvalidArgument], a name PostgreSQL would not keep as given.
// Any other name is safe once quoted.
func checkName(table, what, name string) error {
	var problem string
	switch {
	case name == "":
		problem = "empty " + what + " name"
	case strings.IndexByte(name, 0) >= 0:
		problem = fmt.Sprintf("%s name %q contains a NUL byte", what, name)
	case !utf8.ValidString(name):
		problem = fmt.Sprintf("%s name %q is not valid UTF-8", what, name)
	case len(name) > maxIdentifierLen:
		problem = fmt.Sprintf("%s name %q is %d bytes long; PostgreSQL keeps %d", what, name, len(name), maxIdentifierLen)
	default:
		return nil
	}
	return fmt.Errorf("%w: table %q: %s", pgcc.ErrInvalidArgument, table, problem)
}

// quote is the one place a name becomes SQL.
func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

func (d *desc) ident() pgx.Identifier {
	if d.schema == "" {
		return pgx.Identifier{d.table}
	}
	return pgx.Identifier{d.schema, d.table}
}

// validate checks every name of d. Positions are the caller's to get right.
func (d *desc) validate() error {
	if d.schema != "" {
		if err := checkName(d.table, "schema", d.schema); err != nil {
			return err
		}
	}
	if err := checkName(d.table, "table", d.table); err != nil {
		return err
	}
	seen := make(map[string]bool, len(d.cols))
	for _, c := range d.cols {
		if err := checkName(d.table, "column", c); err != nil {
			return err
		}
		if seen[c] {
			return fmt.Errorf("%w: table %q: column %q is mapped by two fields", pgcc.ErrInvalidArgument, d.table, c)
		}
		seen[c] = true
	}
	return nil
}

// versionExpr is the version as SQL, qualified by alias when alias is not empty.
func (d *desc) versionExpr(alias string) string {
	if alias != "" {
		alias += "."
	}
	if d.kind == VersionXmin {
		return alias + xminExpr
	}
	return alias + quote(d.cols[d.version])
}

// bump is the SET item that makes a new version: the counter plus one, or, for xmin, a no-op assignment of
// the first key column, which writes a new row version (and so a new xmin) without changing any value.
func (d *desc) bump(alias string) string {
	if alias != "" {
		alias += "."
	}
	if d.kind == VersionXmin {
		k := quote(d.cols[d.key[0]])
		return k + " = " + alias + k
	}
	v := quote(d.cols[d.version])
	return v + " = " + alias + v + " + 1"
}

func (d *desc) returningVersion() string {
	if d.kind == VersionXmin {
		return " RETURNING " + xminExpr
	}
	return ""
}

// whereKey writes `k1 = $n AND k2 = $n+1 …` and returns the next parameter number.
func (d *desc) whereKey(b *strings.Builder, n int) int {
	for i, k := range d.key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString(quote(d.cols[k]))
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(n))
		n++
	}
	return n
}

func (d *desc) isKey(pos int) bool {
	for _, k := range d.key {
		if k == pos {
			return true
		}
	}
	return false
}

func contains(list []int, pos int) bool {
	for _, p := range list {
		if p == pos {
			return true
		}
	}
	return false
}

// selectList is the columns in struct order, the version read as a bigint.
func (d *desc) selectList() string {
	var b strings.Builder
	for i, c := range d.cols {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == d.version {
			b.WriteString(d.versionExpr(""))
			continue
		}
		b.WriteString(quote(c))
	}
	return b.String()
}

// build makes every statement of d. d must be valid.
func (d *desc) build() statements {
	var s statements
	table := d.ident().Sanitize()
	for i := range d.cols {
		if i != d.version && !d.isKey(i) {
			s.updateSet = append(s.updateSet, i)
		}
	}

	var b strings.Builder
	b.WriteString("SELECT ")
	b.WriteString(d.selectList())
	b.WriteString(" FROM ")
	b.WriteString(table)
	b.WriteString(" WHERE ")
	d.whereKey(&b, 1)
	s.get = b.String()

	b.Reset()
	b.WriteString("INSERT INTO ")
	b.WriteString(table)
	b.WriteString(" (")
	var values strings.Builder
	for i, c := range d.cols {
		if i == d.version || contains(d.defaults, i) {
			continue
		}
		if len(s.insertArgs) > 0 {
			b.WriteString(", ")
			values.WriteString(", ")
		}
		s.insertArgs = append(s.insertArgs, i)
		b.WriteString(quote(c))
		values.WriteString("$")
		values.WriteString(strconv.Itoa(len(s.insertArgs)))
	}
	if d.kind == VersionCounter {
		if len(s.insertArgs) > 0 {
			b.WriteString(", ")
			values.WriteString(", ")
		}
		b.WriteString(quote(d.cols[d.version]))
		values.WriteString("1")
	}
	if values.Len() == 0 {
		// Every column has its default: "INSERT INTO t () VALUES ()" is not SQL.
		s.insert = "INSERT INTO " + table + " DEFAULT VALUES"
	} else {
		b.WriteString(") VALUES (")
		b.WriteString(values.String())
		b.WriteString(")")
		s.insert = b.String()
	}
	s.insertRet = append(s.insertRet, d.defaults...)
	if d.kind == VersionXmin {
		s.insertRet = append(s.insertRet, d.version)
	}
	if len(s.insertRet) > 0 {
		var r strings.Builder
		r.WriteString(" RETURNING ")
		for i, pos := range s.insertRet {
			if i > 0 {
				r.WriteString(", ")
			}
			if pos == d.version {
				r.WriteString(d.versionExpr(""))
			} else {
				r.WriteString(quote(d.cols[pos]))
			}
		}
		s.insert += r.String()
	}

	s.update = d.updateSQL(s.updateSet)
	s.force = d.updateSQL(nil)

	b.Reset()
	b.WriteString("DELETE FROM ")
	b.WriteString(table)
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, 1)
	b.WriteString(" AND ")
	b.WriteString(d.versionExpr(""))
	b.WriteString(" = $")
	b.WriteString(strconv.Itoa(n))
	s.delete = b.String()

	b.Reset()
	b.WriteString("SELECT ")
	b.WriteString(d.versionExpr(""))
	b.WriteString(" FROM ")
	b.WriteString(table)
	b.WriteString(" WHERE ")
	d.whereKey(&b, 1)
	b.WriteString(" FOR SHARE")
	s.probe = b.String()
	return s
}

// updateSQL is the compare-and-swap UPDATE of the columns at positions set: parameters $1… are those
// columns, then the key, then the expected version.
func (d *desc) updateSQL(set []int) string {
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" SET ")
	for i, pos := range set {
		b.WriteString(quote(d.cols[pos]))
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(i + 1))
		b.WriteString(", ")
	}
	b.WriteString(d.bump(""))
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, len(set)+1)
	b.WriteString(" AND ")
	b.WriteString(d.versionExpr(""))
	b.WriteString(" = $")
	b.WriteString(strconv.Itoa(n))
	b.WriteString(d.returningVersion())
	return b.String()
}

// typedRows writes the derived table v(c0, c1, …) of n rows: an ordinal (1…n, a literal) followed by
// parameters for the columns at positions cols. A first branch reading zero rows of the table itself gives
// every column its type, so that PostgreSQL types the parameters after the table's columns; VALUES would
// type them as text.
func (d *desc) typedRows(b *strings.Builder, cols []int, n int) {
	b.WriteString("((SELECT 0")
	for _, pos := range cols {
		b.WriteString(", ")
		if pos == d.version {
			b.WriteString(d.versionExpr(""))
		} else {
			b.WriteString(quote(d.cols[pos]))
		}
	}
	b.WriteString(" FROM ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" LIMIT 0)")
	p := 1
	for row := 1; row <= n; row++ {
		b.WriteString(" UNION ALL SELECT ")
		b.WriteString(strconv.Itoa(row))
		for range cols {
			b.WriteString(", $")
			b.WriteString(strconv.Itoa(p))
			p++
		}
	}
	b.WriteString(") AS v(c0")
	for i := range cols {
		b.WriteString(", c")
		b.WriteString(strconv.Itoa(i + 1))
	}
	b.WriteString(")")
}

// bulkColumns is the column order of a bulk update's rows: key, set columns, version.
func (d *desc) bulkColumns(set []int) []int {
	cols := append([]int(nil), d.key...)
	cols = append(cols, set...)
	return append(cols, d.version)
}

// bulkSQL updates n rows in one statement. Parameters are, row after row, the row's key, its set columns
// and its expected version (see bulkColumns); RETURNING gives the ordinal of each row written and its new
// version.
func (d *desc) bulkSQL(set []int, n int) string {
	cols := d.bulkColumns(set)
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	for i, pos := range set {
		b.WriteString(quote(d.cols[pos]))
		b.WriteString(" = v.c")
		b.WriteString(strconv.Itoa(len(d.key) + i + 1))
		b.WriteString(", ")
	}
	b.WriteString(d.bump("t"))
	b.WriteString(" FROM ")
	d.typedRows(&b, cols, n)
	b.WriteString(" WHERE ")
	for i, k := range d.key {
		b.WriteString("t.")
		b.WriteString(quote(d.cols[k]))
		b.WriteString(" = v.c")
		b.WriteString(strconv.Itoa(i + 1))
		b.WriteString(" AND ")
	}
	b.WriteString(d.versionExpr("t"))
	b.WriteString(" = v.c")
	b.WriteString(strconv.Itoa(len(cols)))
	b.WriteString(" RETURNING v.c0, ")
	b.WriteString(d.versionExpr("t"))
	return b.String()
}

// bulkProbeSQL reads the current version of n keys, locking the rows FOR SHARE as probe does: ordinal and
// version of each key that still exists.
func (d *desc) bulkProbeSQL(n int) string {
	var b strings.Builder
	b.WriteString("SELECT v.c0, ")
	b.WriteString(d.versionExpr("t"))
	b.WriteString(" FROM ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t JOIN ")
	d.typedRows(&b, d.key, n)
	b.WriteString(" ON ")
	for i, k := range d.key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString("t.")
		b.WriteString(quote(d.cols[k]))
		b.WriteString(" = v.c")
		b.WriteString(strconv.Itoa(i + 1))
	}
	b.WriteString(" FOR SHARE OF t")
	return b.String()
}
