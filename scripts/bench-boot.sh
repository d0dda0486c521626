#!/usr/bin/env bash
# Boot benchmark: time from process start to kernel entry and to /init (the boot marker
# /init writes) for the recipe kernel with 1 and 2 vCPUs, RUNS runs each (default 3), and,
# when qemu-system-x86_64 is installed, QEMU -M microvm on the same kernel and command line
# (CPUID CX16 hidden) to the furthest milestone both reach. Prints a Markdown table.
#
# Usage: scripts/bench-boot.sh   (after cargo build --release)
# Env:   RUNS (default 3); SKIP_ROWS=1 runs only the QEMU comparison
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
kernel_dir="$(guest/build-kernel.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
guest/build-initramfs.sh "$work/initramfs.cpio" >/dev/null
vmm=target/release/rypervisor
[ -x "$vmm" ] || { echo "build first: cargo build --release" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "| vCPUs | kernel entry (median of $runs) | /init marker (median) | VM ended (median) |"
echo "|---|---|---|---|"
for cpus in $([ "${SKIP_ROWS:-0}" = 1 ] || echo 1 2); do
  : > "$work/entry"; : > "$work/marker"; : > "$work/end"
  for _ in $(seq "$runs"); do
    "$vmm" boot --kernel "$kernel_dir/vmlinux" --initrd "$work/initramfs.cpio" --mem 128M \
      --cpus "$cpus" --timeout 300 --stats </dev/null >/dev/null 2>"$work/err"
    awk '/kernel entry/ {print $3 >> "'"$work/entry"'"} /boot marker/ {print $3 >> "'"$work/marker"'"} /^  end/ {print $2 >> "'"$work/end"'"}' "$work/err"
  done
  echo "| $cpus | $(median < "$work/entry") s | $(median < "$work/marker") s | $(median < "$work/end") s |"
done

if command -v qemu-system-x86_64 >/dev/null; then
  # earlyprintk: without it every line before the serial console registers (~8 s here)
  # appears at once, and the early milestones would all measure the same moment.
  cmdline="console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 noxsave clearcpuid=308,151,137 nofsgsbase earlyprintk=serial"
  for what in rypervisor qemu; do
    start=$(date +%s.%N)
    if [ "$what" = qemu ]; then
      timeout 60 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -enable-kvm \
        -cpu host,-cx16,-arch-capabilities -m 128M -smp 1 -nodefaults -no-user-config -nographic -serial stdio \
        -kernel "$kernel_dir/vmlinux" -initrd "$work/initramfs.cpio" -append "$cmdline" \
        </dev/null >"$work/$what.log" 2>&1 &
    else
      timeout 120 "$vmm" boot --kernel "$kernel_dir/vmlinux" --initrd "$work/initramfs.cpio" \
        --mem 128M --cpu-template nested-safe --cmdline earlyprintk=serial </dev/null >"$work/$what.log" 2>&1 &
    fi
    pid=$!
    : > "$work/$what.times"
    # QEMU stops at the kernel's int3 self-test, right after the Spectre report.
    for milestone in "banner|Linux version" "memory|Memory: " "calibrate|Calibrating delay loop" \
                     "before-int3-selftest|Spectre V2 : User space" "init|Run /init" "marker|rypervisor-init: hello"; do
      label="${milestone%%|*}"; pattern="${milestone#*|}"
      while ! grep -q "$pattern" "$work/$what.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || break 2
        sleep 0.05
      done
      printf '%s %.3f\n' "$label" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$work/$what.times"
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo
  echo "| milestone (wall time from start) | rypervisor | QEMU -M microvm | ratio |"
  echo "|---|---|---|---|"
  while read -r label t; do
    q=$(awk -v l="$label" '$1 == l {print $2}' "$work/qemu.times")
    [ -n "$q" ] || continue
    printf '| %s | %s s | %s s | %.2f |\n' "$label" "$t" "$q" "$(echo "scale=4; $t / $q" | bc)"
  done < "$work/rypervisor.times"
fi
