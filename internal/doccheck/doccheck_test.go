package doccheck_test

import (
	_ "embed"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgcc/pgcc/internal/doccheck"
)

//go:embed prelude.go.txt
var prelude string

// imports are the packages a snippet may use without importing them.
var imports = []string{
	"context", "errors", "fmt", "log", "log/slog", "net/http", "strconv", "strings", "time",
	"github.com/jackc/pgx/v5", "github.com/jackc/pgx/v5/pgconn", "github.com/jackc/pgx/v5/pgxpool",
	"github.com/jackc/pgerrcode",
	"github.com/pgcc/pgcc", "github.com/pgcc/pgcc/txn", "github.com/pgcc/pgcc/repo",
	"github.com/pgcc/pgcc/lock", "github.com/pgcc/pgcc/lease", "github.com/pgcc/pgcc/migrations",
	// pgcctest is a module of its own, resolved through go.work like migrations; nothing in the main module
	// imports it, `go list -export` only builds its export data.
	"github.com/pgcc/pgcc/pgcctest", "testing", "net/http/httptest",
	"github.com/pgcc/pgcc/counter",
	// otel is a module of its own too (the OpenTelemetry adapter), resolved the same way.
	"github.com/pgcc/pgcc/otel", "sync",
}

func TestDocumentationCompiles(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checker, err := doccheck.NewChecker(root, imports, prelude)
	if err != nil {
		t.Fatal(err)
	}
	files, err := doccheck.MarkdownFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	blocks, spans := 0, 0
	for _, name := range files {
		f, err := os.Open(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		bs, ss, err := doccheck.Scan(name, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			for _, err := range checker.Check(b) {
				t.Error(err)
			}
		}
		for _, s := range ss {
			if err := checker.CheckSpan(s); err != nil {
				t.Error(err)
			}
		}
		blocks += len(bs)
		spans += len(ss)
	}
	t.Logf("%d files, %d Go blocks, %d inline code spans checked", len(files), blocks, spans)
}

func TestCheckerCatchesWhatDocsGetWrong(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checker, err := doccheck.NewChecker(root, imports, prelude)
	if err != nil {
		t.Fatal(err)
	}
	md := "Intro `lock.XactLock` and `repo.Table.Modify` exist; `repo.Modify` and `lock.Table.Nope` do not.\n\n" +
		"```go\nerr := lock.XactLock(tx, 42) // ctx forgotten\n```\n\n" +
		"```go\nerr := lock.XactLock(ctx, tx, 42)\nif err != nil {\n\treturn err\n}\n```\n\n" +
		"```sql\nSELECT 1\n```\n"
	blocks, spans, err := doccheck.Scan("test.md", strings.NewReader(md))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || len(spans) != 4 {
		t.Fatalf("scanned %d blocks and %d spans, want 2 and 4", len(blocks), len(spans))
	}
	if errs := checker.Check(blocks[0]); len(errs) == 0 {
		t.Error("a call without its context compiled")
	}
	if errs := checker.Check(blocks[1]); len(errs) != 0 {
		t.Errorf("a correct block failed: %v", errs)
	}
	var bad []string
	for _, s := range spans {
		if checker.CheckSpan(s) != nil {
			bad = append(bad, s.Text)
		}
	}
	if strings.Join(bad, ",") != "repo.Modify,lock.Table.Nope" {
		t.Errorf("references reported missing: %v", bad)
	}
}
