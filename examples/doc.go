// Package examples holds the patterns of docs/README.md as runnable, tested Example functions, one file per
// pattern: an account balance updated optimistically, stock reserved under a row lock, one batch job per
// project at a time with a lease, a job queue with SKIP LOCKED, and an HTTP handler mapping versions to
// ETag/If-Match and pgcc's errors to 409, 412 and 423. Run them with `go test ./examples`.
package examples
