# rcri — the two commands of the README, plus helpers.
#   make run    set up this Debian 12 host, build rcri, serve on the embedded default config
#   make test   set up this host for the tests, then fmt + clippy + every test

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test build release check install clean

run:
	bash packaging/setup-host.sh run
	$(CARGO) build --release --locked
	./target/release/rcri serve

test:
	bash packaging/setup-host.sh test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked --no-fail-fast --all-targets

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Installs the binary, the systemd unit and an example configuration (not enabled).
install: release
	install -D -m 0755 target/release/rcri /usr/local/bin/rcri
	install -D -m 0644 packaging/rcri.service /etc/systemd/system/rcri.service
	install -d /etc/rcri/rcri.d
	[ -e /etc/rcri/rcri.toml ] || install -m 0644 config/rcri.toml /etc/rcri/rcri.toml

clean:
	$(CARGO) clean
