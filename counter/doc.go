// Package counter spreads one logical counter over several rows, "slots", so that concurrent increments do
// not queue on one row lock: each [Counter.Add] adds to a random slot, [Counter.Get] sums the slots, and
// [Counter.Compact] folds them back into one row.
//
// # When it is right
//
// A slotted counter is for pure counters: page views, events, a tenant's usage, a total that many writers
// increment and that is read as a whole. Writers of different slots never wait for each other, so N slots let
// up to about N increments commit at once where a single row lets one. A read costs a sum over the counter's
// slots (an index range scan of at most N rows) and sees every increment committed before it started.
//
// # When it is not
//
// A slotted counter cannot enforce a bound: no single row holds the total, so "never below zero" (stock, a
// balance, a quota) cannot be checked by one statement; use repo.Table.Add with a guard, or a repo.Combiner.
// Nor is it for values read far more often than written, where the sum costs more than it saves, nor for a
// value that other columns of a row depend on.
//
// # Schema
//
// A Counter uses a table that the application creates (or [Counter.CreateTable] creates), with one row per
// counter name and slot:
//
//	CREATE TABLE counters (
//		name  text   NOT NULL,
//		slot  int    NOT NULL,
//		value bigint NOT NULL,
//		PRIMARY KEY (name, slot)
//	)
//
// Rows are created by the first Add to their slot; no counter needs to be declared first. docs/optimistic.md
// compares it with the other ways of updating a hot row.
package counter
