package testguest

import (
	"io"
	"net"
	"strings"
)

// ControlArgs are the QEMU arguments that connect the guest's command
// port to a unix socket at path, on which QEMU listens. The port is an
// ISA serial port pinned to index 1, so that the guest finds it as ttyS1
// whatever else is on the command line; it is part of the machine, so the
// target of a migration needs the same arguments (with its own path).
func ControlArgs(path string) []string {
	// A comma inside an option value is written as two.
	p := strings.ReplaceAll(path, ",", ",,")
	return []string{
		"-chardev", "socket,id=havenctl,path=" + p + ",server=on,wait=off",
		"-device", "isa-serial,chardev=havenctl,index=1",
	}
}

// Send gives the guest one command on its control port, through the
// socket at path (see ControlArgs). The guest prints "haven-cmd <command>"
// on its console once it has carried it out.
func Send(path, command string) error {
	c, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	_, err = io.WriteString(c, command+"\n")
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}
