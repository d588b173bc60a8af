package repo

import (
	"github.com/pgcc/pgcc"

	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
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
	set := []int{1}
	return []string{s.get, s.insert, s.update, s.delete, s.force, s.probe,
		d.updateSQL(set), d.bulkSQL(s.updateSet, 1), d.bulkSQL(s.updateSet, 3), d.bulkProbeSQL(2)}
}

// FuzzBuild builds every statement from arbitrary schema, table and column names and checks that each is,
// segment for segment, the statement built from harmless placeholder names: a name can only ever be one
// whole quoted identifier. Names the builder must reject (empty, NUL, invalid UTF-8, over 63 bytes,
// duplicates) must be rejected by validate.
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
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3], seed[4], false)
		f.Add(seed[0], seed[1], seed[2], seed[3], seed[4], true)
	}
	f.Fuzz(func(t *testing.T, schema, table, key, col, version string, xmin bool) {
		names := []string{schema, table, key, col, version}
		kind := VersionCounter
		if xmin {
			kind = VersionXmin
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
		if xmin {
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
	for _, tc := range []struct{ got, want string }{
		{s.get, `SELECT "id", "owner", "version" FROM "accounts" WHERE "id" = $1`},
		{s.insert, `INSERT INTO "accounts" ("id", "owner", "version") VALUES ($1, $2, 1)`},
		{s.update, `UPDATE "accounts" SET "owner" = $1, "version" = "version" + 1 WHERE "id" = $2 AND "version" = $3`},
		{s.delete, `DELETE FROM "accounts" WHERE "id" = $1 AND "version" = $2`},
		{s.force, `UPDATE "accounts" SET "version" = "version" + 1 WHERE "id" = $1 AND "version" = $2`},
		{s.probe, `SELECT "version" FROM "accounts" WHERE "id" = $1 FOR SHARE`},
		{d.bulkSQL(s.updateSet, 2), `UPDATE "accounts" AS t SET "owner" = v.c2, "version" = t."version" + 1 FROM ((SELECT 0, "id", "owner", "version" FROM "accounts" LIMIT 0) UNION ALL SELECT 1, $1, $2, $3 UNION ALL SELECT 2, $4, $5, $6) AS v(c0, c1, c2, c3) WHERE t."id" = v.c1 AND t."version" = v.c3 RETURNING v.c0, t."version"`},
		{d.bulkProbeSQL(1), `SELECT v.c0, t."version" FROM "accounts" AS t JOIN ((SELECT 0, "id" FROM "accounts" LIMIT 0) UNION ALL SELECT 1, $1) AS v(c0, c1) ON t."id" = v.c1 FOR SHARE OF t`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
	x := &desc{table: "wallets", kind: VersionXmin, cols: []string{"id", "xmin"}, key: []int{0}, version: 1}
	xs := x.build()
	for _, tc := range []struct{ got, want string }{
		{xs.insert, `INSERT INTO "wallets" ("id") VALUES ($1) RETURNING xmin::text::bigint`},
		{xs.update, `UPDATE "wallets" SET "id" = "id" WHERE "id" = $1 AND xmin::text::bigint = $2 RETURNING xmin::text::bigint`},
	} {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
}

// TestStatementsCached: the statements of UpdateColumns and UpdateAll are built once per column list and
// batch size, then reused.
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
	first, err := tbl.partialStmt([]string{"b", "a"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := tbl.partialStmt([]string{"b", "a"})
	if err != nil || again != first {
		t.Fatalf("second lookup built a new statement (%p, %p, %v)", first, again, err)
	}
	if want := `UPDATE "t" SET "b" = $1, "a" = $2, "version" = "version" + 1 WHERE "id" = $3 AND "version" = $4`; first.sql != want {
		t.Fatalf("partial statement %s, want %s", first.sql, want)
	}
	if tbl.sql.update != `UPDATE "t" SET "a" = $1, "b" = $2, "version" = "version" + 1 WHERE "id" = $3 AND "version" = $4` {
		t.Fatalf("update statement %s", tbl.sql.update)
	}
}
