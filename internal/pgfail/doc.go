// Package pgfail decides what a failure means for the transaction or statement it interrupted: certainly not
// committed, outcome unknown, or an ordinary error. Package txn uses it to retry what certainly did not
// commit and to resolve or report what may have; package repo uses it to report an autocommitted write whose
// outcome is unknown.
//
// The rule for COMMIT (and for a statement that commits by itself) is strict: an error is "not committed"
// only with proof that the server answered (an ERROR response, which rolls the transaction back) or that
// nothing of the statement was written. pgconn.SafeToRetry is not such proof: pgx v5.12.0 reports "conn
// closed", with SafeToRetry true, when the connection was reset after COMMIT reached the server and committed.
// The caller's own observation that the connection was already closed before COMMIT was attempted is.
//
// pgfail imports pgx and pgerrcode only; it decides by SQLSTATE and error types, never by message text.
package pgfail
