// Command controlplane is kube-apiserver, kube-controller-manager and etcd in one binary (one
// link, one file on disk), chosen by the first argument:
//
//	controlplane apiserver [kube-apiserver flags]
//	controlplane controller-manager [kube-controller-manager flags]
//	controlplane etcd [--name N --data-dir D --listen-client-urls U --listen-peer-urls U ...]
//	controlplane version
//
// Built and cached by binderhub_guard.lab.controlplane.build; started by
// `binderhub-guard control-plane`.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: controlplane apiserver|controller-manager|etcd|version [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "apiserver", "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "controller-manager", "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "etcd":
		os.Exit(runEtcd(args))
	case "version":
		fmt.Println(version.Get().GitVersion)
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown component %q\n", os.Args[1])
		os.Exit(2)
	}
}

func urls(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		out = append(out, *u)
	}
	return out, nil
}

// runEtcd starts an embedded single-member etcd with the subset of etcd's own flags that a
// local control plane needs (same names as etcd's), and stops it on SIGTERM or SIGINT.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	name := fs.String("name", "default", "member name")
	dataDir := fs.String("data-dir", "", "data directory")
	listenClient := fs.String("listen-client-urls", "http://127.0.0.1:2379", "")
	advertiseClient := fs.String("advertise-client-urls", "", "defaults to --listen-client-urls")
	listenPeer := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "")
	advertisePeer := fs.String("initial-advertise-peer-urls", "", "defaults to --listen-peer-urls")
	unsafeNoFsync := fs.Bool("unsafe-no-fsync", false, "disable fsync (tests only)")
	quotaBytes := fs.Int64("quota-backend-bytes", 0, "backend quota (0: etcd's default)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}
	if *advertiseClient == "" {
		*advertiseClient = *listenClient
	}
	if *advertisePeer == "" {
		*advertisePeer = *listenPeer
	}
	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.LogLevel = *logLevel
	cfg.UnsafeNoFsync = *unsafeNoFsync
	cfg.QuotaBackendBytes = *quotaBytes
	var err error
	if cfg.ListenClientUrls, err = urls(*listenClient); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	if cfg.AdvertiseClientUrls, err = urls(*advertiseClient); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	if cfg.ListenPeerUrls, err = urls(*listenPeer); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	if cfg.AdvertisePeerUrls, err = urls(*advertisePeer); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready to serve client requests on", *advertiseClient)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60 s")
		return 1
	case s := <-sig:
		e.Close()
		fmt.Fprintln(os.Stderr, "etcd: stopped by", s)
		return 0
	}
	select {
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		e.Close()
		return 1
	case s := <-sig:
		e.Close()
		fmt.Fprintln(os.Stderr, "etcd: stopped by", s)
		return 0
	}
}
