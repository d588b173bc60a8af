// Package doccheck type-checks the Go code in the project's Markdown documentation, so that a guide cannot
// show a call that does not compile or name a function that does not exist.
//
// Two checks, both run by this package's tests (part of `make test`):
//
//   - every fenced block marked ```go in README.md and docs/ is type-checked against the real packages:
//     first as the body of a function (statements, local types), then as file-level declarations. The names
//     a snippet takes for granted (ctx, pool, tx, accounts, an Account type, …) are declared by a prelude
//     (prelude.go.txt in this directory); a snippet may shadow them. Unused variables and imports are
//     allowed, since snippets are fragments.
//   - every inline code span of the form pkg.Name or pkg.Type.Method, where pkg is one of pgcc's packages,
//     must name an exported identifier that exists.
package doccheck

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Block is one fenced ```go block of a Markdown file.
type Block struct {
	File string // path relative to the repository root
	Line int    // line of the opening fence
	Code string
}

// Span is one inline code span naming a package member.
type Span struct {
	File string
	Line int
	Text string
}

// Scan reads the fenced Go blocks and the inline code spans of a Markdown file.
func Scan(name string, r io.Reader) ([]Block, []Span, error) {
	var blocks []Block
	var spans []Span
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	line := 0
	var cur *Block
	var body strings.Builder
	inOther := false
	for sc.Scan() {
		line++
		text := sc.Text()
		trimmed := strings.TrimSpace(text)
		switch {
		case cur != nil && strings.HasPrefix(trimmed, "```"):
			cur.Code = body.String()
			blocks = append(blocks, *cur)
			cur = nil
			body.Reset()
			continue
		case cur != nil:
			body.WriteString(text)
			body.WriteByte('\n')
			continue
		case inOther && strings.HasPrefix(trimmed, "```"):
			inOther = false
			continue
		case inOther:
			continue
		case trimmed == "```go":
			cur = &Block{File: name, Line: line}
			continue
		case strings.HasPrefix(trimmed, "```"):
			inOther = true
			continue
		}
		for _, m := range inlineCode.FindAllStringSubmatch(text, -1) {
			spans = append(spans, Span{File: name, Line: line, Text: m[1]})
		}
	}
	if cur != nil {
		return nil, nil, fmt.Errorf("%s:%d: unterminated ```go block", name, cur.Line)
	}
	return blocks, spans, sc.Err()
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// memberRef matches pkg.Name and pkg.Type.Method at the start of a span, with an optional type argument list
// or call after it.
var memberRef = regexp.MustCompile(`^\*?(pgcc|txn|repo|lock|lease|counter|migrations|pgcctest)\.([A-Z]\w*)(?:\[[^\]]*\])?(?:\.([A-Z]\w*))?`)

// Packages are the import paths of the packages whose members docs may name, by package name.
var Packages = map[string]string{
	"pgcc":       "github.com/pgcc/pgcc",
	"txn":        "github.com/pgcc/pgcc/txn",
	"repo":       "github.com/pgcc/pgcc/repo",
	"lock":       "github.com/pgcc/pgcc/lock",
	"lease":      "github.com/pgcc/pgcc/lease",
	"counter":    "github.com/pgcc/pgcc/counter",
	"migrations": "github.com/pgcc/pgcc/migrations",
	"pgcctest":   "github.com/pgcc/pgcc/pgcctest",
}

// Checker type-checks snippets against the export data of the packages they may use.
type Checker struct {
	dir     string // the repository's root
	fset    *token.FileSet
	imp     types.Importer
	prelude *ast.File
	imports []string // import paths every snippet may use
}

// NewChecker builds the export data of imports (and their dependencies) with `go list -export`, run in dir,
// and parses prelude, the declarations every snippet may rely on.
func NewChecker(dir string, imports []string, prelude string) (*Checker, error) {
	args := append([]string{"list", "-export", "-deps", "-f", "{{.ImportPath}}\t{{.Export}}"}, imports...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -export: %v: %s", err, stderr.String())
	}
	exports := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, file, ok := strings.Cut(l, "\t")
		if ok && file != "" {
			exports[path] = file
		}
	}
	fset := token.NewFileSet()
	lookup := func(path string) (io.ReadCloser, error) {
		file, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %q: add it to the checker's imports", path)
		}
		return os.Open(file)
	}
	pre, err := parser.ParseFile(fset, "prelude.go", prelude, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("prelude: %w", err)
	}
	return &Checker{dir: dir, fset: fset, imp: importer.ForCompiler(fset, "gc", lookup), prelude: pre, imports: imports}, nil
}

// Check type-checks one block and returns its errors; nil means it compiles.
func (c *Checker) Check(b Block) []error {
	// The errors of the first wrapping that parses are the ones worth reading; a parse error only when none
	// does.
	var parseErrs []error
	for _, w := range []struct{ before, after string }{
		{"func _() error {\n", "\nreturn nil\n}\n"},
		{"func _() {\n", "\n}\n"},
		{"", ""},
	} {
		errs, parsed := c.check(b, w.before+b.Code+w.after, strings.Count(w.before, "\n"))
		if parsed {
			if len(errs) > 0 && w.before != "" && tooManyReturns(errs) {
				continue // the snippet returns nothing; the next wrapping fits it
			}
			return errs
		}
		if parseErrs == nil {
			parseErrs = errs
		}
	}
	return parseErrs
}

func tooManyReturns(errs []error) bool {
	for _, err := range errs {
		if strings.Contains(err.Error(), "too many return values") || strings.Contains(err.Error(), "not enough return values") {
			return true
		}
	}
	return false
}

// check type-checks body, the block's code with offset lines of wrapping before it, and reports whether it
// parsed.
func (c *Checker) check(b Block, body string, offset int) ([]error, bool) {
	var src strings.Builder
	src.WriteString("package doc\n\nimport (\n")
	for _, p := range c.imports {
		fmt.Fprintf(&src, "\t%q\n", p)
	}
	src.WriteString(")\n\n")
	header := strings.Count(src.String(), "\n")
	src.WriteString(body)
	f, err := parser.ParseFile(c.fset, b.File, src.String(), parser.SkipObjectResolution)
	if err != nil {
		return []error{fmt.Errorf("%s:%d: %v", b.File, b.Line, err)}, false
	}
	// The snippet's own top-level names win over the prelude's.
	own := map[string]bool{}
	for _, d := range f.Decls {
		for _, n := range declNames(d) {
			own[n] = true
		}
	}
	pre := &ast.File{Name: c.prelude.Name}
	for _, d := range c.prelude.Decls {
		keep := true
		for _, n := range declNames(d) {
			if own[n] {
				keep = false
			}
		}
		if keep {
			pre.Decls = append(pre.Decls, d)
		}
	}
	pre.Imports = c.prelude.Imports
	var errs []error
	conf := types.Config{
		Importer: c.imp,
		Error: func(err error) {
			msg := err.Error()
			if strings.Contains(msg, "declared and not used") || strings.Contains(msg, "imported") && strings.Contains(msg, "not used") {
				return
			}
			if te, ok := err.(types.Error); ok && te.Fset.File(te.Pos) != nil && te.Fset.File(te.Pos).Name() == b.File {
				p := te.Fset.Position(te.Pos)
				msg = fmt.Sprintf("%s:%d: %s", b.File, b.Line+p.Line-header-offset, te.Msg)
			}
			errs = append(errs, fmt.Errorf("%s", msg))
		},
	}
	_, _ = conf.Check("doc", c.fset, []*ast.File{pre, f}, nil)
	return errs, true
}

func declNames(d ast.Decl) []string {
	var names []string
	switch d := d.(type) {
	case *ast.FuncDecl:
		if d.Recv == nil {
			names = append(names, d.Name.Name)
		}
	case *ast.GenDecl:
		for _, s := range d.Specs {
			switch s := s.(type) {
			case *ast.TypeSpec:
				names = append(names, s.Name.Name)
			case *ast.ValueSpec:
				for _, n := range s.Names {
					names = append(names, n.Name)
				}
			}
		}
	}
	return names
}

// CheckSpan reports an error when span names a member of a pgcc package that does not exist. Spans that name
// nothing in pgcc's packages are ignored.
func (c *Checker) CheckSpan(s Span) error {
	m := memberRef.FindStringSubmatch(s.Text)
	if m == nil {
		return nil
	}
	path, ok := Packages[m[1]]
	if !ok {
		return nil
	}
	pkg, err := c.imp.Import(path)
	if err != nil {
		return fmt.Errorf("%s:%d: `%s`: %v", s.File, s.Line, s.Text, err)
	}
	if strings.HasPrefix(m[2], "Example") {
		// A runnable example lives in the package's test files, which export data does not cover.
		if !c.hasExample(path, m[2]) {
			return fmt.Errorf("%s:%d: `%s`: package %s has no example %s", s.File, s.Line, s.Text, m[1], m[2])
		}
		return nil
	}
	obj := pkg.Scope().Lookup(m[2])
	if obj == nil {
		return fmt.Errorf("%s:%d: `%s`: package %s has no member %s", s.File, s.Line, s.Text, m[1], m[2])
	}
	if m[3] == "" {
		return nil
	}
	if _, ok := obj.(*types.TypeName); !ok {
		// pkg.Var.Field or pkg.Func.x: not a method reference; only names are checked.
		return nil
	}
	ms, _, _ := types.LookupFieldOrMethod(types.NewPointer(obj.Type()), true, pkg, m[3])
	if ms == nil {
		return fmt.Errorf("%s:%d: `%s`: %s.%s has no field or method %s", s.File, s.Line, s.Text, m[1], m[2], m[3])
	}
	return nil
}

// hasExample reports whether a test file of the package at path declares the example function name.
func (c *Checker) hasExample(path, name string) bool {
	rel := strings.TrimPrefix(strings.TrimPrefix(path, "github.com/pgcc/pgcc"), "/")
	files, _ := filepath.Glob(filepath.Join(c.dir, rel, "*_test.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && bytes.Contains(b, []byte("func "+name+"(")) {
			return true
		}
	}
	return false
}

// MarkdownFiles lists README.md and every .md file under docs/ of the repository at root, sorted, as paths
// relative to root.
func MarkdownFiles(root string) ([]string, error) {
	files := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files[1:])
	return files, err
}
