package heartbeat

import (
	"reflect"
	"testing"
)

func TestLabelsRoundTrip(t *testing.T) {
	in := map[string]string{"rack": "r12", "cpu": "epyc-9004", "storage.class": "nvme"}
	s := FormatLabels(in)
	if s != "cpu=epyc-9004,rack=r12,storage.class=nvme" {
		t.Fatalf("canonical form %q", s)
	}
	if got := ParseLabels(s); !reflect.DeepEqual(got, in) {
		t.Fatalf("round trip: %v", got)
	}
	if ParseLabels("") != nil || FormatLabels(nil) != "" {
		t.Fatal("no labels must encode to nothing")
	}
}
