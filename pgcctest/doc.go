// Package pgcctest is pgcc's public test kit: what a service's own tests need to exercise code built on pgcc
// against a real PostgreSQL.
//
// It is a Go module of its own (github.com/pgcc/pgcc/pgcctest) so that testcontainers-go, which it uses to
// start a disposable PostgreSQL when a Docker engine answers, enters only the module graph of code that
// imports it, typically a service's tests.
package pgcctest
