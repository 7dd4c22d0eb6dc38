// Package layering holds no code: its test reads every package's imports
// and keeps the layers of DESIGN.md apart (see layering_test.go).
package layering
