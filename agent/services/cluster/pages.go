package cluster

import (
	"encoding/base64"
	"strings"

	"github.com/haven-ha/haven/agent/services"
)

// Lists come a page at a time, sorted by name, as Google's AIP-158 has it:
// a page size the server bounds, an opaque token for the next page.
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

// pageSize is how many items a page holds: the default for 0, at most
// MaxPageSize.
func pageSize(asked int32) (int, error) {
	switch {
	case asked < 0:
		return 0, services.Invalid("page_size: %d is negative", asked)
	case asked == 0:
		return DefaultPageSize, nil
	case asked > MaxPageSize:
		return MaxPageSize, nil
	}
	return int(asked), nil
}

// A page token is the last name the page before returned, with the list it
// came from so a token of one list is refused by another. The next page
// starts after that name, whatever was created or deleted meanwhile, so it
// needs no state kept between calls and any agent can answer it. It is
// opaque to callers (base64) so that its form may change.
func pageToken(list, last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(list + "\x00" + last))
}

// afterToken is the name a page starts after: "" for the first page.
func afterToken(list, token string) (string, error) {
	if token == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", services.Invalid("page_token: %q is not a token this agent gave", token)
	}
	kind, last, ok := strings.Cut(string(raw), "\x00")
	if !ok || kind != list || last == "" {
		return "", services.Invalid("page_token: %q is not a token of %s", token, list)
	}
	return last, nil
}

// hasLabels reports whether have carries every label of want.
func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func invalidEnum(field string, v int32) error {
	return services.Invalid("%s: %d is not a known value", field, v)
}
