package main

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	havenv1 "github.com/haven-ha/haven/proto/haven/v1"
)

func TestKeyringGenerate(t *testing.T) {
	gen := func() string {
		var out bytes.Buffer
		root := newRootCmd(func(string) string { return "" })
		root.SetArgs([]string{"keyring", "generate"})
		root.SetOut(&out)
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out.String())
	}
	a, b := gen(), gen()
	if k, err := base64.StdEncoding.DecodeString(a); err != nil || len(k) != 32 {
		t.Fatalf("generated %q: %d bytes, %v; want base64 of 32", a, len(k), err)
	}
	if a == b {
		t.Errorf("two keys generated alike: %s", a)
	}
}

func TestKeysTable(t *testing.T) {
	var out bytes.Buffer
	err := writeKeysTable(&out, &havenv1.ListKeysResponse{
		Keys: []*havenv1.KeyringKey{{Key: "NEW=", HeldBy: 2, PrimaryOn: []string{"n1", "n2"}}, {Key: "OLD=", HeldBy: 1}},
		Nodes: []*havenv1.KeyringNodeResult{{Node: "n1", Keys: []string{"NEW=", "OLD="}}, {Node: "n2", Keys: []string{"NEW="}},
			{Node: "n3", Error: "Unavailable: connection refused"}},
		Failed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `KEY   NODES  PRIMARY ON
NEW=  2/2    n1,n2
OLD=  1/2    -
n3 did not answer: Unavailable: connection refused
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}
}
