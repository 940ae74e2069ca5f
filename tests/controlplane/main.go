// Command controlplane is the test Kubernetes control plane of the Downloader project.
//
// One binary, several processes (the fixture in tests/k8s starts each one):
//
//	controlplane apiserver [etcd flags] -- [kube-apiserver flags]
//	    an embedded etcd (go.etcd.io/etcd/server/v3/embed) and kube-apiserver in one process
//	controlplane controller-manager [kube-controller-manager flags]
//	controlplane scheduler [kube-scheduler flags]
//	controlplane certs --dir DIR
//	    a CA, a serving certificate for 127.0.0.1/localhost and a service-account key pair
//
// The Kubernetes commands are the real ones from k8s.io/kubernetes/cmd/*/app; build.sh
// stamps their version (k8s.io/component-base/version) so /version is real.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as in the upstream commands

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	"k8s.io/component-base/version"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: controlplane COMMAND [flags]

commands:
  apiserver [--etcd-data-dir DIR --etcd-client-port N --etcd-peer-port N] -- [kube-apiserver flags]
  controller-manager [kube-controller-manager flags]
  scheduler [kube-scheduler flags]
  certs --dir DIR
  version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "apiserver", "kube-apiserver":
		os.Exit(runAPIServer(args))
	case "controller-manager", "kube-controller-manager":
		os.Exit(runCommand(kcmapp.NewControllerManagerCommand(), args))
	case "scheduler", "kube-scheduler":
		os.Exit(runCommand(schedulerapp.NewSchedulerCommand(), args))
	case "certs":
		os.Exit(runCerts(args))
	case "version", "--version":
		fmt.Println(version.Get().String())
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
}

// runCommand runs an upstream cobra command with the given arguments, the way its own
// main() would (component-base/cli.Run: logging flags, signal handling, exit code).
func runCommand(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
