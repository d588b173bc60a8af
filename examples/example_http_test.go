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

// httpError answers err with the status pgcc.HTTPStatus gives it: a stale If-Match is 412 with the current
// ETag, a missing one 428, an unparsable one 400, a row locked by someone else right now 423 (try again
// shortly), a missing row 404. Server-side failures (5xx) are not described to the client.
func httpError(w http.ResponseWriter, err error) {
	status := pgcc.HTTPStatus(err)
	var ce *pgcc.ConflictError
	switch {
	case status == http.StatusPreconditionFailed && errors.As(err, &ce) && !ce.Deleted:
		w.Header().Set("ETag", repo.ETag(ce.Actual))
	case status == http.StatusLocked:
		w.Header().Set("Retry-After", "1")
	}
	msg := err.Error()
	if status >= 500 {
		msg = http.StatusText(status) // log err; do not show it
	}
	http.Error(w, msg, status)
}

// docID reads the {id} path value, answering 400 when it is not a number.
func docID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		http.Error(w, "the document id must be a number", http.StatusBadRequest)
		return 0, false
	}
	return id, true
}

func docsHandler(pool *pgxpool.Pool, docs *repo.Table[Doc]) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /docs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := docID(w, r)
		if !ok {
			return
		}
		d, err := docs.Get(r.Context(), pool, pgcc.Key{id})
		if err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("ETag", repo.ETag(docs.VersionOf(&d)))
		fmt.Fprint(w, d.Title)
	})
	// PUT writes the title only if the client's If-Match is still the row's version: no lost update across
	// a user's read-edit-save cycle, however long it took.
	mux.HandleFunc("PUT /docs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := docID(w, r)
		if !ok {
			return
		}
		version, err := repo.ParseETag(r.Header.Get("If-Match"))
		if err != nil {
			httpError(w, err) // 428 without If-Match, 400 for a tag that is not ours
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		d := Doc{ID: id, Title: string(body)}
		if err := docs.SetVersion(&d, version); err != nil {
			httpError(w, err)
			return
		}
		if err := docs.UpdateColumns(r.Context(), pool, &d, "title"); err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("ETag", repo.ETag(docs.VersionOf(&d)))
		w.WriteHeader(http.StatusNoContent)
	})
	// POST …/stamp appends a stamp to the title under a row lock taken with NOWAIT: a user-facing request
	// should not queue behind a long transaction.
	mux.HandleFunc("POST /docs/{id}/stamp", func(w http.ResponseWriter, r *http.Request) {
		id, ok := docID(w, r)
		if !ok {
			return
		}
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

// An HTTP handler mapping versions to ETag/If-Match with repo.ETag and repo.ParseETag, and pgcc's errors to
// statuses with pgcc.HTTPStatus: two users edit the same document from the same read; the first save wins,
// the second gets 412 with the current ETag and must re-read and re-apply; a save without If-Match is 428, one
// with a tag that is not a version 400, a weak tag from a compressing proxy is accepted; a stamp request while
// another transaction holds the row gets 423 at once.
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
	fmt.Println("PUT with a tag that is not ours:", do("PUT", "/docs/1", `"v2"`, "x").Code)
	// A proxy that compresses responses turns "2" into W/"2"; the version is the same.
	weak := do("PUT", "/docs/1", "W/"+alice.Header().Get("ETag"), "alice's second title")
	fmt.Println("PUT with a weak tag:", weak.Code, weak.Header().Get("ETag"))
	fmt.Println("GET a missing document:", do("GET", "/docs/404", "", "").Code, "and a bad id:", do("GET", "/docs/x", "", "").Code)

	// Another transaction holds the row for a while.
	holder, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, _ = holder.Exec(ctx, `SELECT 1 FROM example_docs WHERE id = 1 FOR UPDATE`)
	start := time.Now()
	locked := do("POST", "/docs/1/stamp", "", "")
	fmt.Println("stamp while locked:", locked.Code, locked.Header().Get("Retry-After"), time.Since(start) < time.Second)
	_ = holder.Rollback(ctx)
	fmt.Println("stamp after:", do("POST", "/docs/1/stamp", "", "").Code)
	fmt.Println("GET:", do("GET", "/docs/1", "", "").Body.String())
	// Output:
	// GET: 200 "1" draft
	// alice PUT: 204 "2"
	// bob PUT: 412 current ETag "2"
	// PUT without If-Match: 428
	// PUT with a tag that is not ours: 400
	// PUT with a weak tag: 204 "3"
	// GET a missing document: 404 and a bad id: 400
	// stamp while locked: 423 1 true
	// stamp after: 204
	// GET: alice's second title [stamped]
}
