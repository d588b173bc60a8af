package examples_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Doc is a row of example_docs.
type Doc struct {
	ID      int64  `db:"id"`
	Title   string `db:"title"`
	Version int64  `db:"version"`
}

// etag and ifMatch map a row version to an HTTP entity tag and back.
func etag(version int64) string { return strconv.Quote(strconv.FormatInt(version, 10)) }

func ifMatch(r *http.Request) (int64, bool) {
	v, err := strconv.Unquote(r.Header.Get("If-Match"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n > 0
}

// httpError maps pgcc's errors to statuses: a stale If-Match is 412, a row locked by someone else right now
// is 423 (try again shortly), a job already running or conflicts that retries could not resolve are 409.
func httpError(w http.ResponseWriter, err error) {
	var ce *pgcc.ConflictError
	switch {
	case errors.As(err, &ce) && ce.Deleted, errors.Is(err, pgcc.ErrNotFound):
		http.Error(w, "not found", http.StatusNotFound)
	case errors.Is(err, pgcc.ErrRetriesExhausted), errors.Is(err, pgcc.ErrHeld):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.As(err, &ce):
		w.Header().Set("ETag", etag(ce.Actual))
		http.Error(w, err.Error(), http.StatusPreconditionFailed)
	case errors.Is(err, pgcc.ErrLockNotAvailable):
		w.Header().Set("Retry-After", "1")
		http.Error(w, "locked by another request", http.StatusLocked)
	default:
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
}

func docsHandler(pool *pgxpool.Pool, docs *repo.Table[Doc]) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /docs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		d, err := docs.Get(r.Context(), pool, pgcc.Key{id})
		if err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("ETag", etag(d.Version))
		fmt.Fprint(w, d.Title)
	})
	// PUT writes the title only if the client's If-Match is still the row's version: no lost update across
	// a user's read-edit-save cycle, however long it took.
	mux.HandleFunc("PUT /docs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		version, ok := ifMatch(r)
		if !ok {
			http.Error(w, "If-Match with the document's ETag is required", http.StatusPreconditionRequired)
			return
		}
		body, _ := io.ReadAll(r.Body)
		d := Doc{ID: id, Title: string(body), Version: version}
		if err := docs.UpdateColumns(r.Context(), pool, &d, "title"); err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("ETag", etag(d.Version))
		w.WriteHeader(http.StatusNoContent)
	})
	// POST …/stamp appends a stamp to the title under a row lock taken with NOWAIT: a user-facing request
	// should not queue behind a long transaction.
	mux.HandleFunc("POST /docs/{id}/stamp", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		err := txn.Run(r.Context(), pool, func(ctx context.Context, tx pgx.Tx) error {
			rows, err := lock.Load(ctx, tx, docs, []pgcc.Key{{id}}, lock.WithWait(lock.NoWait))
			if err != nil {
				return err
			}
			rows[0].Title += " [stamped]"
			return docs.Update(ctx, tx, &rows[0])
		})
		if err != nil {
			httpError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// An HTTP handler mapping versions to ETag/If-Match and pgcc's errors to 412 and 423: two users edit the same
// document from the same read; the first save wins, the second gets 412 with the current ETag and must
// re-read and re-apply; a stamp request while another transaction holds the row gets 423 at once.
func Example_httpETag() {
	ctx := context.Background()
	pool, drop, err := open(ctx, `CREATE TABLE example_docs (id bigint PRIMARY KEY, title text NOT NULL, version bigint NOT NULL)`)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop("example_docs")
	docs, err := repo.NewTable[Doc]("example_docs")
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := docs.Insert(ctx, pool, &Doc{ID: 1, Title: "draft"}); err != nil {
		fmt.Println(err)
		return
	}
	h := docsHandler(pool, docs)
	do := func(method, path, ifMatch, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}

	read := do("GET", "/docs/1", "", "")
	tag := read.Header().Get("ETag")
	fmt.Println("GET:", read.Code, tag, read.Body.String())
	alice := do("PUT", "/docs/1", tag, "alice's title")
	fmt.Println("alice PUT:", alice.Code, alice.Header().Get("ETag"))
	bob := do("PUT", "/docs/1", tag, "bob's title")
	fmt.Println("bob PUT:", bob.Code, "current ETag", bob.Header().Get("ETag"))
	fmt.Println("PUT without If-Match:", do("PUT", "/docs/1", "", "x").Code)

	// Another transaction holds the row for a while.
	holder, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, _ = holder.Exec(ctx, `SELECT 1 FROM example_docs WHERE id = 1 FOR UPDATE`)
	start := time.Now()
	locked := do("POST", "/docs/1/stamp", "", "")
	fmt.Println("stamp while locked:", locked.Code, time.Since(start) < time.Second)
	_ = holder.Rollback(ctx)
	fmt.Println("stamp after:", do("POST", "/docs/1/stamp", "", "").Code)
	fmt.Println("GET:", do("GET", "/docs/1", "", "").Body.String())
	// Output:
	// GET: 200 "1" draft
	// alice PUT: 204 "2"
	// bob PUT: 412 current ETag "2"
	// PUT without If-Match: 428
	// stamp while locked: 423 true
	// stamp after: 204
	// GET: alice's title [stamped]
}
