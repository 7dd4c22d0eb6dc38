package main

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "1073741824", want: 1 << 30},
		{in: "512B", want: 512},
		{in: "512M", want: 512 << 20},
		{in: "512m", want: 512 << 20},
		{in: "512MiB", want: 512 << 20},
		{in: "512Mi", want: 512 << 20},
		{in: "512MB", want: 512 << 20},
		{in: "4G", want: 4 << 30},
		{in: "4GiB", want: 4 << 30},
		{in: " 4 GiB ", want: 4 << 30},
		{in: "1.5G", want: 3 << 29},
		{in: "2T", want: 2 << 40},
		{in: "8k", want: 8 << 10},
		{in: "0G", want: 0},
		{in: "", wantErr: true},
		{in: "G", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "4XB", wantErr: true},
		{in: "4 gigs", wantErr: true},
		{in: "1.5", wantErr: true}, // half a byte
		{in: "1.2.3G", wantErr: true},
		{in: "9223372036854775807", want: 9223372036854775807},
		{in: "9223372036854775808", wantErr: true},
		{in: "8388608T", wantErr: true}, // 2^63
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0B"},
		{1023, "1023B"},
		{1024, "1KiB"},
		{1536, "1.5KiB"},
		{512 << 20, "512MiB"},
		{8_372_957_184, "7.8GiB"},
		{1<<30 - 1<<20*1/50, "1GiB"}, // rounds up into the next unit, not to 1024MiB
		{1 << 40, "1TiB"},
		{-2048, "-2KiB"},
	}
	for _, tt := range tests {
		if got := formatSize(tt.in); got != tt.want {
			t.Errorf("formatSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormatCPU(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 1000: "1", 16000: "16", 2500: "2500m", 250: "250m"} {
		if got := formatCPU(in); got != want {
			t.Errorf("formatCPU(%d) = %q, want %q", in, got, want)
		}
	}
}
