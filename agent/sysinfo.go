package agent

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"

	sockaddr "github.com/hashicorp/go-sockaddr"
)

// physicalMemory reads MemTotal from /proc/meminfo; 0 when unknown, which
// leaves the node with no memory to offer rather than a guessed amount.
func physicalMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

// privateIP is the address to advertise when binding a wildcard: the first
// private IPv4 address, as Consul and Nomad pick it.
func privateIP() (string, error) {
	ip, err := sockaddr.GetPrivateIP()
	if err != nil {
		return "", err
	}
	if ip == "" {
		return "", errors.New("no private IPv4 address found: set advertise_addr")
	}
	return ip, nil
}
