"""What the models of the sm90 backward's hand-overs share (ws_protocol.py, lag_protocol.py; no GPU): named barriers
whose generations complete at a count, a ring of stages whose loads land at random later, and a scheduler that steps
the agents (generators that yield wherever the kernel may be overtaken) in a random interleaving."""
import argparse
import random


class ProtocolError(Exception):
    pass


class Barriers:
    """Named barriers: count(key) arrivals complete a generation. arrive() counts; sync() (a generator) counts and
    waits for the generation it joined to complete."""

    def __init__(self, count):
        self.count, self.counts, self.gens = count, {}, {}

    def arrive(self, key, w):
        n = self.count(key)
        c = self.counts.get(key, 0) + w
        if c > n:
            raise ProtocolError(f"{key}: generation {self.gens.get(key, 0)} over-subscribed")
        if c == n:
            c, self.gens[key] = 0, self.gens.get(key, 0) + 1
        self.counts[key] = c

    def sync(self, key, w):
        g = self.gens.get(key, 0)
        self.arrive(key, w)
        while self.gens.get(key, 0) == g:
            yield

    def pending(self):
        return {k: c for k, c in self.counts.items() if c}


class Ring:
    """S stages, each an mbarrier whose phases complete as the loads issued into it land (in order, at random later)."""

    def __init__(self, S):
        self.S, self.landed, self.issued = S, [0] * S, []

    def wait_full(self, i):
        while self.landed[i % self.S] <= i // self.S:
            yield


def drive(agents, ring, seed, steps=200000):
    """Steps the agents in a random order (each step: one agent's next yield, or the oldest load landing) until all
    have returned; then no barrier may have arrivals pending and no load may be left unwaited for."""
    rnd = random.Random(seed)
    alive = list(range(len(agents)))
    for _ in range(steps):
        if not alive:
            break
        if ring.issued and rnd.random() < 0.3:
            i = ring.issued.pop(0)
            if ring.landed[i % ring.S] != i // ring.S:
                raise ProtocolError(f"block {i} landed on stage {i % ring.S} out of phase")
            ring.landed[i % ring.S] += 1
            continue
        a = rnd.choice(alive)
        try:
            next(agents[a])
        except StopIteration:
            alive.remove(a)
    else:
        raise ProtocolError("deadlock")


def check_exit(bars, ring):
    """After drive: no arrivals pending on any barrier, no load issued that no block waited for."""
    pending = bars.pending()
    if pending:
        raise ProtocolError(f"arrivals pending at exit: {pending}")
    if ring.issued:
        raise ProtocolError("loads issued that no block waited for")


def main(doc, sweep, argv=None):
    """A model's command line: sweep(max_iters, seeds) -> failures; prints the first ten and their count; exit status
    1 if any."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-iters", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=200)
    args = ap.parse_args(argv)
    failures = sweep(args.max_iters, args.seeds)
    for f in failures[:10]:
        print("FAIL", f)
    print(f"{len(failures)} failures")
    return 1 if failures else 0
