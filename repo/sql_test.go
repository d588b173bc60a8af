package repo

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgcc/pgcc"
)

// segment is a piece of SQL: a quoted identifier (decoded) or the text between two of them.
type segment struct {
	ident bool
	text  string
}

// split cuts sql into quoted identifiers and the text around them, following PostgreSQL's rule: a quoted
// identifier runs from " to the next " not doubled. The statements built here contain no string literals or
// comments, so a " outside an identifier cannot occur.
func split(sql string) ([]segment, error) {
	var segs []segment
	var text strings.Builder
	for i := 0; i < len(sql); i++ {
		if sql[i] != '"' {
			text.WriteByte(sql[i])
			continue
		}
		segs = append(segs, segment{text: text.String()})
		text.Reset()
		var ident strings.Builder
		closed := false
		for i++; i < len(sql); i++ {
			if sql[i] == '"' {
				if i+1 < len(sql) && sql[i+1] == '"' {
					ident.WriteByte('"')
					i++
					continue
				}
				closed = true
				break
			}
			ident.WriteByte(sql[i])
		}
		if !closed {
			return nil, fmt.Errorf("unterminated quoted identifier in %q", sql)
		}
		segs = append(segs, segment{ident: true, text: ident.String()})
	}
	return append(segs, segment{text: text.String()}), nil
}

// sameShape checks that got, built from names, is want, built from the placeholders s0…, with each
// placeholder identifier replaced by the name at its index: no name changed the SQL around it.
func sameShape(got, want string, names []string) error {
	g, err := split(got)
	if err != nil {
		return err
	}
	w, err := split(want)
	if err != nil {
		return err
	}
	if len(g) != len(w) {
		return fmt.Errorf("%d segments, want %d:\n%s\n%s", len(g), len(w), got, want)
	}
	for i := range g {
		if g[i].ident != w[i].ident {
			return fmt.Errorf("segment %d differs in kind:\n%s\n%s", i, got, want)
		}
		if !w[i].ident {
			if g[i].text != w[i].text {
				return fmt.Errorf("text %q, want %q:\n%s\n%s", g[i].text, w[i].text, got, want)
			}
			continue
		}
		var idx int
		if _, err := fmt.Sscanf(w[i].text, "s%d", &idx); err != nil {
			return fmt.Errorf("placeholder %q: %v", w[i].text, err)
		}
		if g[i].text != names[idx] {
			return fmt.Errorf("identifier %q, want %q:\n%s\n%s", g[i].text, names[idx], got, want)
		}
	}
	return nil
}

// statementsOf lists every statement a description leads to.
func statementsOf(d *desc) []string {
	s := d.build()
	types := make([]colType, len(d.cols))
	for i := range types {
		types[i] = colType{name: "bigint"}
	}
	set := []int{1}
	all := []string{s.get, s.insert, s.insertOrGet, s.upsert, s.update, s.delete, s.deleteAny, s.force, s.probe,
		d.updateSQL(set, true, true), d.updateSQL(set, false, true), d.updateSQL(nil, true, true),
		d.bulkSQL(s.updateSet, types), d.bulkSQL(nil, types), d.bulkProbeSQL(types)}
	if d.kind != VersionXmin { // KeepVersion is refused for xmin, which every UPDATE changes
		all = append(all, d.updateSQL(set, true, false), d.updateSQL(set, false, false), d.updateSQL(nil, true, false))
	}
	return all
}

// FuzzBuild builds every statement from arbitrary schema, table and column names and checks that each is,
// segment for segment, the statement built from harmless placeholder names: a name can only ever be one
// whole quoted identifier. Names the builder must reject (empty, NUL, invalid UTF-8, over 63 bytes,
// duplicates) must be rejected by validate. It also checks the key values of a Get against an integer and a
// string key field: a float is accepted for the integer field exactly when it is an integer in range (never
// truncated), a string only for the string field.
//
// Its corpus is in testdata/fuzz/FuzzBuild; run it for a while with
//
//	go test -run '^$' -fuzz '^FuzzBuild$' -fuzztime 10s ./repo/
func FuzzBuild(f *testing.F) {
	for _, seed := range [][5]string{
		{"", "accounts", "id", "balance", "version"},
		{"public", "select", "from", "where", "order"},
		{`my "schema"`, `"; DROP TABLE x; --`, `a"b`, `""`, `"`},
		{"s", "t", "$1", "?", "x'y"},
		{"ünï", "tab\tle", "with space", "Mixed Case", "/* c */"},
		{"", strings.Repeat("n", 63), "k", "c", "v"},
		{"", strings.Repeat("n", 64), "k", "c", "v"},
		{"", "t\x00", "k", "c", "v"},
		{"", "t", "k", "k", "v"},
		{"", "t", "p", "t", "excluded"},
	} {
		for kind := range uint8(3) {
			f.Add(seed[0], seed[1], seed[2], seed[3], seed[4], kind, 3.9, "42")
		}
	}
	f.Add("", "t", "k", "c", "v", uint8(0), math.Ldexp(1, 63), "")
	f.Add("", "t", "k", "c", "v", uint8(0), -math.Ldexp(1, 63), "x\ny")
	f.Add("", "t", "k", "c", "v", uint8(0), math.NaN(), "\x00")
	f.Add("", "t", "k", "c", "v", uint8(0), math.Inf(1), "id=1")
	f.Fuzz(func(t *testing.T, schema, table, key, col, version string, kindNum uint8, num float64, text string) {
		checkKeyValues(t, num, text)
		names := []string{schema, table, key, col, version}
		kind := VersionKind(kindNum % 3)
		if kind == VersionXmin {
			names[4] = "xmin"
		}
		d := &desc{schema: schema, table: table, kind: kind, cols: names[2:], key: []int{0}, version: 2, defaults: []int{1}}
		err := d.validate()
		if bad := badNames(names, schema == ""); bad != (err != nil) {
			t.Fatalf("validate(%q) = %v, but the names are bad: %v", names, err, bad)
		}
		if err != nil {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Fatalf("validate: %v does not match pgcc.ErrInvalidArgument", err)
			}
			return
		}
		safe := []string{"s0", "s1", "s2", "s3", "s4"}
		if schema == "" {
			safe[0] = ""
		}
		if kind == VersionXmin {
			safe[4] = "xmin"
		}
		p := &desc{schema: safe[0], table: safe[1], kind: kind, cols: safe[2:], key: []int{0}, version: 2, defaults: []int{1}}
		got, want := statementsOf(d), statementsOf(p)
		for i := range got {
			if err := sameShape(got[i], want[i], names); err != nil {
				t.Fatalf("statement %d: %v", i, err)
			}
		}
	})
}

// checkKeyValues checks keyValueProblem against rules written independently: num for an int64 key field is
// accepted exactly when it is an integer in range, and then pgx would send it unchanged; num for a string
// field never; text for a string field always, for an int64 field never.
func checkKeyValues(t *testing.T, num float64, text string) {
	t.Helper()
	int64Field, stringField := reflect.TypeFor[int64](), reflect.TypeFor[string]()
	integral := num == math.Trunc(num) && num >= -math.Ldexp(1, 63) && num < math.Ldexp(1, 63)
	if got := keyValueProblem(num, int64Field) == ""; got != integral {
		t.Fatalf("key value %v for an int64 field accepted: %v, want %v", num, got, integral)
	}
	if integral && float64(int64(num)) != num {
		t.Fatalf("key value %v accepted but not exact as an int64", num)
	}
	if keyValueProblem(num, stringField) == "" {
		t.Fatalf("key value %v accepted for a string field", num)
	}
	if problem := keyValueProblem(text, stringField); problem != "" {
		t.Fatalf("key value %q refused for a string field: %s", text, problem)
	}
	if keyValueProblem(text, int64Field) == "" {
		t.Fatalf("key value %q accepted for an int64 field", text)
	}
	if p := keyValueProblem(&text, stringField); p != "" {
		t.Fatalf("pointer to %q refused: %s", text, p)
	}
	if keyValueProblem((*string)(nil), stringField) == "" || keyValueProblem(nil, int64Field) == "" {
		t.Fatal("a NULL key value was accepted")
	}
}

// badNames is the rule validate must implement, written independently.
func badNames(names []string, noSchema bool) bool {
	seen := map[string]bool{}
	for i, n := range names {
		if i == 0 && noSchema {
			continue
		}
		if n == "" || strings.ContainsRune(n, 0) || !utf8.ValidString(n) || len(n) > 63 {
			return true
		}
		if i >= 2 {
			if seen[n] {
				return true
			}
			seen[n] = true
		}
	}
	return false
}

// TestBuildShape pins the statements for one plain table, so that a change to the SQL is a visible diff.
func TestBuildShape(t *testing.T) {
	t.Parallel()
	d := &desc{table: "accounts", cols: []string{"id", "owner", "version"}, key: []int{0}, version: 2}
	s := d.build()
	types := []colType{{name: "bigint"}, {name: "text"}, {name: "bigint"}}
	for _, tc := range []struct{ got, want string }{
		{s.get, `SELECT "id", "owner", coalesce("version", 0) FROM "accounts" WHERE "id" = $1`},
		{s.insert, `INSERT INTO "accounts" AS t ("id", "owner", "version") VALUES ($1, $2, 1)`},
		{s.insertOrGet, `INSERT INTO "accounts" AS t ("id", "owner", "version") VALUES ($1, $2, 1) ON CONFLICT ("id") DO NOTHING RETURNING coalesce("version", 0)`},
		{s.upsert, `INSERT INTO "accounts" AS t ("id", "owner", "version") VALUES ($1, $2, 1) ON CONFLICT ("id") DO UPDATE SET "owner" = excluded."owner", "version" = CASE WHEN ROW(excluded."owner")::record *<> ROW(t."owner")::record THEN coalesce(t."version", 0) + 1 ELSE t."version" END WHERE coalesce(t."version", 0) = 0 RETURNING coalesce(t."version", 0), t.xmax = 0`},
		{s.update, `UPDATE "accounts" AS t SET "owner" = CASE WHEN false THEN t."owner" ELSE $1 END, "version" = CASE WHEN ROW(CASE WHEN false THEN t."owner" ELSE $1 END)::record *<> ROW(CASE WHEN true THEN t."owner" ELSE $1 END)::record THEN coalesce(t."version", 0) + 1 ELSE t."version" END WHERE t."id" = $2 AND coalesce(t."version", 0) = $3 RETURNING coalesce(t."version", 0)`},
		{d.updateSQL(s.updateSet, false, false), `UPDATE "accounts" AS t SET "owner" = $1 WHERE t."id" = $2`},
		{s.delete, `DELETE FROM "accounts" AS t WHERE t."id" = $1 AND coalesce(t."version", 0) = $2`},
		{s.deleteAny, `DELETE FROM "accounts" AS t WHERE t."id" = $1`},
		{s.force, `UPDATE "accounts" AS t SET "version" = coalesce(t."version", 0) + 1 WHERE t."id" = $1 AND coalesce(t."version", 0) = $2 RETURNING coalesce(t."version", 0)`},
		{s.probe, `SELECT coalesce("version", 0) FROM "accounts" WHERE "id" = $1 FOR SHARE`},
		{d.bulkSQL(s.updateSet, types), `UPDATE "accounts" AS t SET "owner" = v.c2, "version" = CASE WHEN ROW(v.c2)::record *<> ROW(t."owner")::record THEN coalesce(t."version", 0) + 1 ELSE t."version" END FROM (SELECT u.ord, u.c1::bigint AS c1, u.c2::text AS c2, u.ver FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS u(c1, c2, ver, ord)) AS v WHERE t."id" = v.c1 AND coalesce(t."version", 0) = v.ver RETURNING v.ord, coalesce(t."version", 0)`},
		{d.bulkProbeSQL(types), `SELECT v.ord, coalesce(t."version", 0) FROM "accounts" AS t JOIN (SELECT u.ord, u.c1::bigint AS c1 FROM unnest($1::text[]) WITH ORDINALITY AS u(c1, ord)) AS v ON t."id" = v.c1 FOR SHARE OF t`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
	x := &desc{table: "wallets", kind: VersionXmin, cols: []string{"id", "xmin"}, key: []int{0}, version: 1}
	xs := x.build()
	for _, tc := range []struct{ got, want string }{
		{xs.insert, `INSERT INTO "wallets" AS t ("id") VALUES ($1) RETURNING xmin::text::bigint`},
		{xs.update, `UPDATE "wallets" AS t SET "id" = t."id" WHERE t."id" = $1 AND t.xmin::text::bigint = $2 RETURNING t.xmin::text::bigint`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
	ts := &desc{table: "posts", kind: VersionTimestamp, cols: []string{"id", "body", "updated_at"}, key: []int{0}, version: 2}
	tss := ts.build()
	for _, tc := range []struct{ got, want string }{
		{tss.insert, `INSERT INTO "posts" AS t ("id", "body", "updated_at") VALUES ($1, $2, clock_timestamp()) RETURNING "updated_at"`},
		{tss.update, `UPDATE "posts" AS t SET "body" = CASE WHEN false THEN t."body" ELSE $1 END, "updated_at" = CASE WHEN ROW(CASE WHEN false THEN t."body" ELSE $1 END)::record *<> ROW(CASE WHEN true THEN t."body" ELSE $1 END)::record THEN greatest(clock_timestamp(), t."updated_at" + interval '1 microsecond') ELSE t."updated_at" END WHERE t."id" = $2 AND t."updated_at" = $3 RETURNING t."updated_at"`},
		{tss.force, `UPDATE "posts" AS t SET "updated_at" = greatest(clock_timestamp(), t."updated_at" + interval '1 microsecond') WHERE t."id" = $1 AND t."updated_at" = $2 RETURNING t."updated_at"`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
}

// TestStatementsCached: the statements of UpdateColumns and of write options are built once per column set
// and options, then reused, whatever the order the columns are named in.
func TestStatementsCached(t *testing.T) {
	t.Parallel()
	type row struct {
		ID      int64  `db:"id"`
		A       string `db:"a"`
		B       string `db:"b"`
		Version int64  `db:"version"`
	}
	tbl, err := NewTable[row]("t")
	if err != nil {
		t.Fatal(err)
	}
	set, err := tbl.columns([]string{"b", "a"})
	if err != nil {
		t.Fatal(err)
	}
	first := tbl.variant(set, writeConfig{})
	other, err := tbl.columns([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if again := tbl.variant(other, writeConfig{}); again != first {
		t.Fatalf("second lookup built a new statement (%p, %p)", first, again)
	}
	if skip := tbl.variant(other, writeConfig{skipCheck: true}); skip == first || strings.Contains(skip.sql, `"version", 0) = $`) {
		t.Fatalf("SkipVersionCheck shares or compares: %s", skip.sql)
	}
	if first.sql != tbl.sql.update {
		t.Fatalf("partial statement of every column %s, want the update %s", first.sql, tbl.sql.update)
	}
	if _, err := tbl.columns([]string{"a\x00b"}); !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("a column name with NUL: %v", err)
	}
}
