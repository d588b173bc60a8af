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

// statements is the SQL a table runs, built once by [NewTable]. Statements for other column lists and write
// options are built on first use and cached in the Table.
type statements struct {
	get         string // SELECT cols FROM t WHERE key
	insert      string // INSERT INTO t (cols) VALUES (…) [RETURNING insertRet]
	insertOrGet string // INSERT … ON CONFLICT (key) DO NOTHING RETURNING insertRet, version
	upsert      string // INSERT … ON CONFLICT (key) DO UPDATE … WHERE version = 0 RETURNING …, inserted (counter only)
	update      string // UPDATE t SET cols, version bumped if a value changed WHERE key AND version RETURNING version
	finalUpdate string // update as a final write: version bumped, no row matched an error (counter only)
	bumpUpdate  string // UPDATE t SET cols, version+1 WHERE key AND version: Modify's write of a changed row (counter only)
	delete      string // DELETE FROM t WHERE key AND version
	deleteAny   string // DELETE FROM t WHERE key
	force       string // UPDATE t SET version bumped WHERE key AND version RETURNING version
	probe       string // SELECT version FROM t WHERE key FOR SHARE

	// Positions in cols of each statement's parameters, in parameter order.
	insertArgs []int
	insertRet  []int // the columns INSERT's RETURNING fills: defaults, then the version when the server sets it
	createRet  []int // the columns InsertOrGet's and Upsert's RETURNING fill: insertRet, with the version always
	updateSet  []int // the columns UPDATE sets: neither key nor version
}

// checkName rejects, with an error matching [pgcc.ErrInvalidArgument], a name PostgreSQL would not keep as
// given. Any other name is safe once quoted.
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

// col is the column at pos, qualified by alias when alias is not empty.
func (d *desc) col(alias string, pos int) string {
	if alias == "" {
		return quote(d.cols[pos])
	}
	return alias + "." + quote(d.cols[pos])
}

// versionRead is the version as read and compared: a NULL counter reads as 0 (Rails' rule), xmin as a bigint,
// a timestamp as it is.
func (d *desc) versionRead(alias string) string {
	switch d.kind {
	case VersionXmin:
		if alias != "" {
			return alias + "." + xminExpr
		}
		return xminExpr
	case VersionTimestamp:
		return d.col(alias, d.version)
	default:
		return "coalesce(" + d.col(alias, d.version) + ", 0)"
	}
}

// nextVersion is the new version of a written row: the counter plus one, or the database's clock, but at least
// one microsecond after the row's old timestamp, so that a timestamp version strictly increases even when two
// writes fall in one microsecond or the clock steps back. Not for xmin, which the server sets.
func (d *desc) nextVersion(alias string) string {
	if d.kind == VersionTimestamp {
		return "greatest(clock_timestamp(), " + d.col(alias, d.version) + " + interval '1 microsecond')"
	}
	return d.versionRead(alias) + " + 1"
}

// firstVersion is the version Insert writes: 1, or the database's clock. Not for xmin.
func (d *desc) firstVersion() string {
	if d.kind == VersionTimestamp {
		return "clock_timestamp()"
	}
	return "1"
}

// whereKey writes `k1 = $n AND k2 = $n+1 …` (columns qualified by alias) and returns the next parameter
// number.
func (d *desc) whereKey(b *strings.Builder, alias string, n int) int {
	for i, k := range d.key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString(d.col(alias, k))
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(n))
		n++
	}
	return n
}

// whereVersion writes ` AND version = $n`.
func (d *desc) whereVersion(b *strings.Builder, alias string, n int) {
	b.WriteString(" AND ")
	b.WriteString(d.versionRead(alias))
	b.WriteString(" = $")
	b.WriteString(strconv.Itoa(n))
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

// writeCols writes the columns at positions, each qualified by alias, separated by commas.
func (d *desc) writeCols(b *strings.Builder, alias string, positions []int) {
	for i, pos := range positions {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d.col(alias, pos))
	}
}

// changed writes the test that a write changes a value: the new values against the row's old ones (SQL
// expressions, one per column written), compared by their binary images with the record operator *<>,
// which needs no equality operator (json has none) and sees every difference (1.0 and 1.00, -0 and 0, 'a' and
// 'A' in citext). The ::record casts keep PostgreSQL from expanding the comparison column by column.
func changed(b *strings.Builder, newVals, oldVals []string) {
	b.WriteString("ROW(" + strings.Join(newVals, ", ") + ")::record *<> ROW(" + strings.Join(oldVals, ", ") + ")::record")
}

// assignVersion writes the SET item for the version of a write whose new values are newVals and whose
// columns' old values are oldVals: for a counter or timestamp, the next version when a value changes, and the
// version unchanged otherwise; for xmin, which every UPDATE changes, a no-op assignment of the first key column
// when nothing else is written (an UPDATE needs one SET item). It reports whether it wrote anything.
func (d *desc) assignVersion(b *strings.Builder, newVals, oldVals []string) bool {
	if d.kind == VersionXmin {
		if len(newVals) > 0 {
			return false
		}
		b.WriteString(quote(d.cols[d.key[0]]) + " = t." + quote(d.cols[d.key[0]]))
		return true
	}
	v := quote(d.cols[d.version])
	if len(newVals) == 0 {
		b.WriteString(v + " = t." + v)
		return true
	}
	b.WriteString(v + " = CASE WHEN ")
	changed(b, newVals, oldVals)
	b.WriteString(" THEN " + d.nextVersion("t") + " ELSE t." + v + " END")
	return true
}

// colsOf is the columns at positions, each qualified by alias.
func (d *desc) colsOf(alias string, positions []int) []string {
	out := make([]string, len(positions))
	for i, pos := range positions {
		out[i] = d.col(alias, pos)
	}
	return out
}

// selectList is the columns in struct order, the version as versionRead has it.
func (d *desc) selectList() string {
	var b strings.Builder
	for i, c := range d.cols {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == d.version {
			b.WriteString(d.versionRead(""))
			continue
		}
		b.WriteString(quote(c))
	}
	return b.String()
}

// build makes the statements of d. d must be valid.
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
	d.whereKey(&b, "", 1)
	s.get = b.String()

	s.insertRet = append(s.insertRet, d.defaults...)
	if d.kind != VersionCounter {
		s.insertRet = append(s.insertRet, d.version)
	}
	s.createRet = s.insertRet
	if d.kind == VersionCounter {
		s.createRet = append(append([]int(nil), d.defaults...), d.version)
	}
	insert := d.insertSQL(&s)
	s.insert = insert + d.returning("", s.insertRet)
	s.insertOrGet = insert + " ON CONFLICT (" + d.keyList() + ") DO NOTHING" + d.returning("", s.createRet)
	if d.kind == VersionCounter {
		s.upsert = d.upsertSQL(insert, &s)
	}

	s.update = d.updateSQL(s.updateSet, true, true)
	if d.kind == VersionCounter {
		s.finalUpdate = d.finalUpdateSQL(s.updateSet, true)
		s.bumpUpdate = d.casSQL(s.updateSet, true)
	}
	s.force = d.forceSQL()
	s.delete = d.deleteSQL(true)
	s.deleteAny = d.deleteSQL(false)

	b.Reset()
	b.WriteString("SELECT ")
	b.WriteString(d.versionRead(""))
	b.WriteString(" FROM ")
	b.WriteString(table)
	b.WriteString(" WHERE ")
	d.whereKey(&b, "", 1)
	b.WriteString(" FOR SHARE")
	s.probe = b.String()
	return s
}

// keyList is the key columns, comma-separated.
func (d *desc) keyList() string {
	var b strings.Builder
	d.writeCols(&b, "", d.key)
	return b.String()
}

// insertSQL is INSERT INTO t AS t (cols) VALUES (…) without RETURNING, and records the positions of its
// parameters in s.insertArgs. The version is the first one, or left to the server (xmin).
func (d *desc) insertSQL(s *statements) string {
	var b, values strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t (")
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
	if d.kind != VersionXmin {
		if len(s.insertArgs) > 0 {
			b.WriteString(", ")
			values.WriteString(", ")
		}
		b.WriteString(quote(d.cols[d.version]))
		values.WriteString(d.firstVersion())
	}
	if values.Len() == 0 {
		// Every column has its default: "INSERT INTO t () VALUES ()" is not SQL.
		return "INSERT INTO " + d.ident().Sanitize() + " AS t DEFAULT VALUES"
	}
	b.WriteString(") VALUES (")
	b.WriteString(values.String())
	b.WriteString(")")
	return b.String()
}

// returning is " RETURNING" and the columns at positions (the version as versionRead has it), or "" for none.
func (d *desc) returning(alias string, positions []int) string {
	if len(positions) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(" RETURNING ")
	for i, pos := range positions {
		if i > 0 {
			b.WriteString(", ")
		}
		if pos == d.version {
			b.WriteString(d.versionRead(alias))
		} else {
			b.WriteString(d.col(alias, pos))
		}
	}
	return b.String()
}

// upsertSQL is insert followed by the update of an existing row at version 0 (a counter table only): the
// columns Insert writes, the version bumped when a value changed. RETURNING gives s.createRet and whether the
// row was inserted (xmax is 0 for a row version no transaction has updated or locked).
func (d *desc) upsertSQL(insert string, s *statements) string {
	var set []int
	for _, pos := range s.insertArgs {
		if contains(s.updateSet, pos) {
			set = append(set, pos)
		}
	}
	var b strings.Builder
	b.WriteString(insert)
	b.WriteString(" ON CONFLICT (")
	b.WriteString(d.keyList())
	b.WriteString(") DO UPDATE SET ")
	for _, pos := range set {
		b.WriteString(quote(d.cols[pos]))
		b.WriteString(" = excluded.")
		b.WriteString(quote(d.cols[pos]))
		b.WriteString(", ")
	}
	d.assignVersion(&b, d.colsOf("excluded", set), d.colsOf("t", set))
	b.WriteString(" WHERE ")
	b.WriteString(d.versionRead("t"))
	b.WriteString(" = 0")
	b.WriteString(d.returning("t", s.createRet))
	b.WriteString(", t.xmax = 0")
	return b.String()
}

// updateSQL is the UPDATE of the columns at positions set. Parameters $1… are those columns, then the key,
// then, when check, the expected version.
//
// With bump the version changes when a value does, and RETURNING gives the version after the write. Comparing
// a parameter with the row needs the parameter's type, which PostgreSQL infers from each use: in the SET
// item of a domain column it would be the domain, in ROW(…) nothing (text). So for a counter or timestamp
// table every use of parameter $n is the expression CASE WHEN false THEN t.c ELSE $n END, which types $n as
// column c (a domain as its base type, the assignment then checks the domain) and which the planner folds
// to $n; the old values are read the same way, CASE WHEN true THEN t.c ELSE $n END, so that both sides of
// the comparison have one type. Without bump the version is left alone (not possible for xmin, which the
// caller refuses).
func (d *desc) updateSQL(set []int, check, bump bool) string {
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	typed := bump && d.kind != VersionXmin
	newVals := make([]string, len(set))
	oldVals := make([]string, len(set))
	for i, pos := range set {
		param := "$" + strconv.Itoa(i+1)
		newVals[i], oldVals[i] = param, d.col("t", pos)
		if typed {
			newVals[i] = "CASE WHEN false THEN " + d.col("t", pos) + " ELSE " + param + " END"
			oldVals[i] = "CASE WHEN true THEN " + d.col("t", pos) + " ELSE " + param + " END"
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quote(d.cols[pos]) + " = " + newVals[i])
	}
	switch {
	case bump:
		var item strings.Builder
		if d.assignVersion(&item, newVals, oldVals) {
			if len(set) > 0 {
				b.WriteString(", ")
			}
			b.WriteString(item.String())
		}
	case len(set) == 0:
		// Nothing to write and the version kept: an UPDATE needs one SET item.
		b.WriteString(quote(d.cols[d.version]) + " = t." + quote(d.cols[d.version]))
	}
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, "t", len(set)+1)
	if check {
		d.whereVersion(&b, "t", n)
	}
	if bump {
		b.WriteString(" RETURNING ")
		b.WriteString(d.versionRead("t"))
	}
	return b.String()
}

// forceSQL gives a row the next version without changing a value (for xmin, an assignment of the key to
// itself, which writes a new row version). Parameters are the key, then the expected version.
func (d *desc) forceSQL() string {
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	if d.kind == VersionXmin {
		d.assignVersion(&b, nil, nil)
	} else {
		b.WriteString(quote(d.cols[d.version]))
		b.WriteString(" = ")
		b.WriteString(d.nextVersion("t"))
	}
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, "t", 1)
	d.whereVersion(&b, "t", n)
	b.WriteString(" RETURNING ")
	b.WriteString(d.versionRead("t"))
	return b.String()
}

// deleteSQL deletes by key and, when check, the expected version.
func (d *desc) deleteSQL(check bool) string {
	var b strings.Builder
	b.WriteString("DELETE FROM ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t WHERE ")
	n := d.whereKey(&b, "t", 1)
	if check {
		d.whereVersion(&b, "t", n)
	}
	return b.String()
}

// colType is what the bulk statements need to know of a column, read from the catalog: the type to cast to
// (format_type, without a type modifier, which the assignment applies) and the OID to encode a value for.
type colType struct {
	name string
	oid  uint32
}

// unnestRows writes the derived table v of the bulk statements: one row per element of the array parameters
// $1…, one parameter per column at positions cols, sent as text[] and cast to the column's type (so that any
// type works, arrays and enums included, and a value is parsed exactly as the column would parse it), plus,
// when withVersion, the expected versions as an array of the version's own type. Its columns are v.ord (the
// row's ordinal, from 1), v.c1… (the columns in order) and v.ver.
func (d *desc) unnestRows(b *strings.Builder, cols []int, types []colType, withVersion bool) {
	b.WriteString("(SELECT u.ord")
	for i, pos := range cols {
		c := "c" + strconv.Itoa(i+1)
		b.WriteString(", u." + c + "::" + types[pos].name + " AS " + c)
	}
	if withVersion {
		b.WriteString(", u.ver")
	}
	b.WriteString(" FROM unnest(")
	for i := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(i+1) + "::text[]")
	}
	if withVersion {
		b.WriteString(", $" + strconv.Itoa(len(cols)+1) + "::")
		if d.kind == VersionTimestamp {
			b.WriteString(types[d.version].name)
		} else {
			b.WriteString("bigint")
		}
		b.WriteString("[]")
	}
	b.WriteString(") WITH ORDINALITY AS u(")
	for i := range cols {
		b.WriteString("c" + strconv.Itoa(i+1) + ", ")
	}
	if withVersion {
		b.WriteString("ver, ")
	}
	b.WriteString("ord)) AS v")
}

// bulkColumns is the column order of a bulk update's arrays: key, then set columns.
func (d *desc) bulkColumns(set []int) []int {
	return append(append([]int(nil), d.key...), set...)
}

// bulkSQL updates any number of rows in one statement. Parameters are one text[] per column of bulkColumns
// and the expected versions; RETURNING gives the ordinal of each row written and its version after the write,
// which changed only when a value did (xmin: always).
func (d *desc) bulkSQL(set []int, types []colType) string {
	cols := d.bulkColumns(set)
	var items, newVals []string
	for i, pos := range set {
		v := "v.c" + strconv.Itoa(len(d.key)+i+1)
		items = append(items, quote(d.cols[pos])+" = "+v)
		newVals = append(newVals, v)
	}
	var b strings.Builder
	if d.assignVersion(&b, newVals, d.colsOf("t", set)) {
		items = append(items, b.String())
	}
	b.Reset()
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	b.WriteString(strings.Join(items, ", "))
	b.WriteString(" FROM ")
	d.unnestRows(&b, cols, types, true)
	b.WriteString(" WHERE ")
	for i, k := range d.key {
		b.WriteString(d.col("t", k) + " = v.c" + strconv.Itoa(i+1) + " AND ")
	}
	b.WriteString(d.versionRead("t"))
	b.WriteString(" = v.ver RETURNING v.ord, ")
	b.WriteString(d.versionRead("t"))
	return b.String()
}

// bulkProbeSQL reads the current version of any number of keys, locking the rows FOR SHARE as probe does:
// ordinal and version of each key that still exists. Parameters are one text[] per key column.
func (d *desc) bulkProbeSQL(types []colType) string {
	var b strings.Builder
	b.WriteString("SELECT v.ord, ")
	b.WriteString(d.versionRead("t"))
	b.WriteString(" FROM ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t JOIN ")
	d.unnestRows(&b, d.key, types, false)
	b.WriteString(" ON ")
	for i, k := range d.key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString(d.col("t", k) + " = v.c" + strconv.Itoa(i+1))
	}
	b.WriteString(" FOR SHARE OF t")
	return b.String()
}
