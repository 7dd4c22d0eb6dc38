/*
 * switch.pml -- fencing across a live-migration switchover.
 *
 * One group, one move S -> T.  Nodes: S = 0 (source, runs the group at
 * epoch E), T = 1 (target, epoch E+1 once committed), F = 2 (a third node,
 * only ever a failover destination).  Epochs: E = 1, E+1 = 2, E+2 = 3.
 *
 * The FSM is one replicated record {phase, owner, epoch} (the op's source,
 * target, src_epoch E and tgt_epoch E+1 are constants).  Every committed
 * value is kept in a history hph/how/hep[0..nh-1]; the leader acts on the
 * newest (it applies its own commits, and a new leader has applied a
 * barrier: see the fencing model), each node's executor on its own applied
 * view vw[n], an index that lags and catches up one entry at a time.
 *
 * Leases, coarsely (the lease machinery is the old model's, notes/fencing):
 * sL / tL = S holds a grant confirming (group, E) / T one confirming
 * (group, E+1), i.e. the driver's per-VM lease end (ExtendLease) lies in
 * the future.  The leader sends a node a grant listing what its record
 * lists for that node (gm[n], one slot, delivered after any delay or
 * never); delivery is ExtendLease: it sets the confirmation and thaws a
 * frozen (not a paused) VM.  A confirmation expires at any time (no clock):
 * a VM running on it freezes in the same step (the driver's gate).  The
 * leader fails a group over from its owner only once the owner's
 * confirmation has expired, and grants in flight to it are void from then on
 * (leases are measured from the send; the leader fences after last grant +
 * L + margin): the old model's proven result, taken as an axiom here.
 *
 * No step is ever forced: a node or the leader may stall for ever, and a
 * message that is never taken is lost.
 *
 * Safety, checked in every state by the monitor:
 *   one runner      (sVM==RUN) + (tVM==RUN) + fRun <= 1
 *   target          tVM==RUN  ->  the record's op is committed
 *   source          sVM==RUN  ->  the record's op is not committed
 *   all or nothing  if the record's owner is alive, it holds a VM at the
 *                   record's epoch that runs or can still run (a potential
 *                   runner): the source's VM not killed, the target's VM
 *                   complete (incoming with all state, running or frozen),
 *                   or the fresh start of a failover.
 * At an end state (nothing can move; reached in the QUIESCE run, where runs
 * end): the op is over, a live owner runs the group at the record's epoch,
 * and no other VM of the group is left (ENDOK).
 * Witnesses W1-W6: good states the monitor steps into, so that pan's list of
 * unreached statements shows whether the full model really gets there.
 */

/* ---- safeguards (1 = present); each ablation removes one ---- */
#ifndef PAUSESTICKY
#define PAUSESTICKY 1  /* (a) a renewal (ExtendLease) does not unpause a paused VM */
#endif
#ifndef READYHOLD
#define READYHOLD 1    /* (b) a source that reported READY never resumes on its own */
#endif
#ifndef CASOP
#define CASOP 1        /* (c) CommitMove checks the op is in flight, not only epoch == E */
#endif
#ifndef ACTVIEW
#define ACTVIEW 1      /* (d2) Activate needs the applied view: committed, owner T, E+1
                          (0: not at all; 2, extra: owner T at E+1 but not the phase) */
#endif
#ifndef ACTGRANT
#define ACTGRANT 1     /* (d1) Activate needs a grant confirming (group, E+1) */
#endif
#ifndef RBRESUME
#define RBRESUME 1     /* (end-check witness, not a fencing safeguard) the source
                          resumes its paused VM once its view shows the rollback */
#endif
#ifndef NEWLDR
#define NEWLDR 0       /* new leader: 0 rolls back an op not committed, leaves a
                          committed one to complete;
                          1 (e1) completes (commits) an op that is in flight;
                          2 (e2) rolls back a committed op, written over the commit;
                          3 (extra) rolls back every unfinished op through the
                            EndMove compare-and-set (refused when committed) */
#endif
/* ---- scope ---- */
#ifndef LDRCHANGE
#define LDRCHANGE 1    /* one leader change, at any time */
#endif
#ifndef CRASH
#define CRASH 1        /* one crash, of S or of T, at any time */
#endif
#ifndef FAILOVER
#define FAILOVER 1     /* one failover of the group from a fenced owner */
#endif
#ifndef LATE
#define LATE 1         /* the agent's decision (view + lease) and the driver's
                          Activate/Resume (lease checked atomically) are two steps */
#endif
#ifndef QUIESCE
#define QUIESCE 0      /* 1: the end-state run: a live node's lease lapses at most
                          once, a renewal is sent only for a lapsed one, and the
                          leader change and the crash are chosen at the start, so
                          that runs end and every end state can be checked */
#endif
#ifndef RUNNERONLY
#define RUNNERONLY 0   /* 1: check "one runner" alone, to see that an ablation
                          leads to two VMs running at once */
#endif
#ifndef WITNESSES
#define WITNESSES (!QUIESCE) /* the monitor steps into the witness states W1-W6 */
#endif

#define S 0
#define T 1
#define F 2

#define INFL 1         /* op phases (none = 0 is before BeginMove, not modelled) */
#define COMM 2
#define RB   3

#define E  1
#define E1 2

#define VNONE 0        /* VM states */
#define VINC  1        /* incoming, partial state */
#define VINCF 2        /* incoming, all state received and verified */
#define VRUN  3
#define VFRZ  4        /* frozen by the lease gate: ExtendLease thaws it */
#define VPAU  5        /* paused for the switchover: only Resume ends it */
#define VDEAD 6        /* killed, discarded or crashed */

#define IDLE   0       /* the source's side of the move */
#define COPY   1       /* pre-copy running; the target holds a partial incoming VM */
#define SENT   2       /* paused, final state sent, waiting for the target's ack */
#define ACKED  3
#define READY  4       /* reported READY to the leader */
#define FAILED 5       /* gave up on its own before READY */

#define KCOMMIT 1      /* log entries */
#define KRB     2      /* EndMove (rolled back): CAS op in flight */
#define KBRB    3      /* (e2) a rollback written whatever the phase */

#define NH 5
byte nh = 1;
byte hph[NH] = INFL;   /* entry 0: BeginMove applied: op in flight, group (S, E) */
byte how[NH];
byte hep[NH] = E;
#define CPH hph[nh-1]
#define COW how[nh-1]
#define CEP hep[nh-1]
byte vw[2];
#define VPH(n) hph[vw[n]]
#define VOW(n) how[vw[n]]
#define VEP(n) hep[vw[n]]

byte sVM = VRUN;       /* the source's VM (epoch E) */
byte tVM;              /* the target's VM (epoch E+1) */
bool fo;               /* the group was failed over ... */
byte fnode;            /* ... to fnode, at the record's next epoch */
bool fRun;             /* the failover's fresh start runs there (sticky) */
bool sL = 1;
bool tL;
byte gm[2];            /* grant in flight to S / T: the epoch it lists, 0 none */
bool alive[2] = 1;
bool crashed;
byte srcPh;
bool startm = 1;       /* leader -> S: switch over now */
bool finalm;           /* S -> T: the final state */
bool ackm;             /* T -> S: all state received and verified */
bool readym;           /* S -> leader: READY */
bool ldr;              /* 0: first leader, 1: the new leader */
bool nd;               /* the new leader has decided on the op */
byte pq[2];            /* entries proposed, not yet committed */
byte pn;
bool pc, pr;           /* first leader proposed CommitMove / EndMove */
bool sRP, tAP;         /* agent decided to Resume / Activate; driver call pending */
bool willLdr = LDRCHANGE; /* the leader change may still happen */
byte willCrash = CRASH;   /* 0 none, 1 may crash S or T, 2 S, 3 T */
byte xb[2] = 1;           /* QUIESCE: lapses left for a live node (0 or 1) */
bool landed, dropped;     /* a CommitMove pending at the leader change landed / was lost */

#define RUNNERS ((sVM == VRUN) + (tVM == VRUN) + fRun)
#define POTENTIAL \
  (fo || \
   (COW == S && CEP == E  && (!alive[S] || sVM == VRUN || sVM == VFRZ || sVM == VPAU)) || \
   (COW == T && CEP == E1 && (!alive[T] || tVM == VINCF || tVM == VRUN || tVM == VFRZ)))
/* witnesses: good states the full model must reach (else its pass would
   be vacuous); the monitor takes a step in each, and pan's report of
   unreached statements shows any that is never reached */
#define W1 (tVM == VRUN && sVM == VDEAD)                         /* the move completes */
#define W2 (srcPh == READY && CPH == RB && sVM == VRUN)          /* READY, rolled back, S resumes */
#define W3 (srcPh == FAILED && sVM == VRUN && tVM == VDEAD && CPH == RB) /* S gave up, resumed */
#define W4 (fo && fRun && CPH == COMM)                           /* failover after a commit */
#define W5 (landed && tVM == VRUN)       /* a CommitMove pending at the leader change lands; T runs */
#define W6 (dropped && srcPh == READY && CPH == RB && sVM == VRUN) /* ... is lost; S resumes */
#define ONE_RUNNER     (RUNNERS <= 1)
#define TGT_COMMITTED  (tVM != VRUN || CPH == COMM)
#define SRC_NOT_AFTER  (sVM != VRUN || CPH != COMM)
#define ALL_OR_NOTHING POTENTIAL
#if RUNNERONLY
#define INV ONE_RUNNER
#else
#define INV (ONE_RUNNER && TGT_COMMITTED && SRC_NOT_AFTER && ALL_OR_NOTHING)
#endif

/* all or nothing at an end state (nothing can move any more): the op is
   over, a live owner runs the group, and the other side holds nothing */
#define OWNERRUNS \
  (fo -> (fRun || (fnode != F && !alive[fnode])) : \
   ((COW == S && CEP == E  && (sVM == VRUN || !alive[S])) || \
    (COW == T && CEP == E1 && (tVM == VRUN || !alive[T]))))
#define LEFTOVERS \
  ((sVM == VDEAD || (!fo && COW == S)) && \
   (tVM == VNONE || tVM == VDEAD || (!fo && COW == T)))
#define ENDOK (CPH != INFL && OWNERRUNS && LEFTOVERS)

#define APPEND(p,o,e) assert(nh < NH); hph[nh] = p; how[nh] = o; hep[nh] = e; nh++
#define PROPOSE(k) assert(pn < 2); pq[pn] = k; pn++

inline applyHead() {
  if
  :: pq[0] == KCOMMIT ->
       if
       :: (CPH == INFL || !CASOP) && CEP == E ->
            APPEND(COMM, T, E1); printf("APPLY CommitMove: (committed, T, E+1)\n")
       :: else -> printf("APPLY CommitMove refused (phase %d epoch %d)\n", CPH, CEP)
       fi
  :: pq[0] == KRB ->
       if
       :: CPH == INFL -> APPEND(RB, S, E); printf("APPLY EndMove: (rolled back, S, E)\n")
       :: else -> printf("APPLY EndMove refused (phase %d)\n", CPH)
       fi
  :: pq[0] == KBRB -> APPEND(RB, S, E); printf("APPLY rollback over phase %d: (rolled back, S, E)\n", hph[nh-2])
  fi;
  pq[0] = pq[1]; pq[1] = 0; pn--
}

/* grant delivery = the executor's ExtendLease for the group at the listed epoch */
inline deliverS() {
  if
  :: gm[S] == E -> sL = 1;
       if
       :: sVM == VFRZ -> sVM = VRUN
       :: sVM == VPAU && !PAUSESTICKY -> sVM = VRUN
       :: else -> skip
       fi
  :: else -> skip   /* lists a failover's fresh start at E+2: not the modelled VM */
  fi;
  printf("S RECV grant ep=%d -> sL=%d sVM=%d\n", gm[S], sL, sVM);
  gm[S] = 0
}
inline deliverT() {
  if
  :: gm[T] == E1 -> tL = 1;
       if :: tVM == VFRZ -> tVM = VRUN :: else -> skip fi
  :: else -> skip
  fi;
  printf("T RECV grant ep=%d -> tL=%d tVM=%d\n", gm[T], tL, tVM);
  gm[T] = 0
}

#define TVIEWOK ((VPH(T) == COMM || ACTVIEW == 2) && VOW(T) == T && VEP(T) == E1)
/* the driver's Activate: refused unless incoming and complete, and (with the
   grant safeguard) the confirmation of E+1 still valid; without it the agent
   passes the lease end of its node's latest renewal, which listed the group
   or not, and the VM runs on that lease */
#define ACTIVATE \
  if \
  :: tVM == VINCF && (tL || !ACTGRANT) -> tVM = VRUN; tL = 1 \
  :: else -> skip \
  fi; printf("T Activate -> tVM=%d\n", tVM)

active proctype system()
{
#if QUIESCE
  /* decide now whether the leader change, the crash and each live node's
     lapse happen at all (each may then still come at any time); otherwise
     every end state would have them all, since none is ever forced */
  atomic {
    if
    :: LDRCHANGE -> willLdr = 1
    :: true -> willLdr = 0
    fi;
    if
    :: CRASH -> willCrash = 2
    :: CRASH -> willCrash = 3
    :: true -> willCrash = 0
    fi;
    if :: xb[S] = 0 :: skip fi;
    if :: xb[T] = 0 :: skip fi
  };
#endif
  do
  /* ---------------- leases ---------------- */
#if QUIESCE
  :: atomic { alive[S] && COW == S && CEP == E  && !sL && gm[S] == 0 -> gm[S] = E;  printf("leader grants S, lists E\n") }
  :: atomic { alive[T] && COW == T && CEP == E1 && !tL && gm[T] == 0 -> gm[T] = E1; printf("leader grants T, lists E+1\n") }
  :: atomic { sL && (!alive[S] || xb[S] > 0) -> xb[S] = xb[S] - alive[S]; sL = 0;
       if :: sVM == VRUN -> sVM = VFRZ :: else -> skip fi; printf("S lease on E expires, sVM=%d\n", sVM) }
  :: atomic { tL && (!alive[T] || xb[T] > 0) -> xb[T] = xb[T] - alive[T]; tL = 0;
       if :: tVM == VRUN -> tVM = VFRZ :: else -> skip fi; printf("T lease on E+1 expires, tVM=%d\n", tVM) }
#else
  :: atomic { alive[S] && COW == S && gm[S] != CEP -> gm[S] = CEP; printf("leader grants S, lists ep %d\n", CEP) }
  :: atomic { alive[T] && COW == T && gm[T] != CEP -> gm[T] = CEP; printf("leader grants T, lists ep %d\n", CEP) }
  :: atomic { sL -> sL = 0; if :: sVM == VRUN -> sVM = VFRZ :: else -> skip fi; printf("S lease on E expires, sVM=%d\n", sVM) }
  :: atomic { tL -> tL = 0; if :: tVM == VRUN -> tVM = VFRZ :: else -> skip fi; printf("T lease on E+1 expires, tVM=%d\n", tVM) }
#endif
  :: atomic { alive[S] && gm[S] != 0 -> deliverS() }
  :: atomic { alive[T] && gm[T] != 0 -> deliverT() }

  /* ---------------- source ---------------- */
  :: atomic { alive[S] && startm && srcPh == IDLE && (sVM == VRUN || sVM == VFRZ) ->
       startm = 0; srcPh = COPY;
       if :: alive[T] && tVM == VNONE -> tVM = VINC :: else -> skip fi;
       printf("S starts the move: pre-copy; T holds incoming tVM=%d\n", tVM) }
  :: atomic { alive[S] && srcPh == COPY && (sVM == VRUN || sVM == VFRZ) ->
       sVM = VPAU; finalm = 1; srcPh = SENT; printf("S PAUSES its VM, sends the final state\n") }
  :: atomic { alive[S] && ackm && srcPh == SENT -> ackm = 0; srcPh = ACKED; printf("S RECV ack\n") }
  :: atomic { alive[S] && srcPh == ACKED -> srcPh = READY;
       if :: !ldr -> readym = 1 :: else -> skip fi; printf("S reports READY\n") }
  /* the transfer failed (stream broke, no ack in time): the source gives up
     and MigrateOut resumes the VM if its lease confirms E, else it is frozen */
  :: atomic { alive[S] && (srcPh == COPY || srcPh == SENT || srcPh == ACKED || (!READYHOLD && srcPh == READY)) ->
       srcPh = FAILED;
       if
       :: sVM == VPAU && sL -> sVM = VRUN
       :: sVM == VPAU && !sL -> sVM = VFRZ
       :: else -> skip
       fi;
       printf("S gives up the move on its own, sVM=%d\n", sVM) }
  /* the executor: resume a paused VM once the applied view shows the op rolled back */
  :: atomic { RBRESUME && alive[S] && sVM == VPAU && !sRP && VPH(S) == RB ->
       if :: LATE -> sRP = 1 :: else -> if :: sL -> sVM = VRUN :: else -> skip fi fi;
       printf("S view: rolled back -> Resume (sRP=%d sVM=%d)\n", sRP, sVM) }
  :: atomic { sRP -> sRP = 0; if :: sVM == VPAU && sL -> sVM = VRUN :: else -> skip fi;
       printf("S driver Resume -> sVM=%d\n", sVM) }
  /* ... and kill it once the view shows the group elsewhere or at another epoch */
  :: atomic { alive[S] && (sVM == VRUN || sVM == VFRZ || sVM == VPAU) && (VOW(S) != S || VEP(S) != E) ->
       sVM = VDEAD; sRP = 0; printf("S view: group gone -> kills its VM\n") }
  :: atomic { alive[S] && vw[S] < nh-1 -> vw[S]++; printf("S applies entry %d\n", vw[S]) }

  /* ---------------- target ---------------- */
  :: atomic { alive[T] && tVM == VINC -> tVM = VDEAD; printf("T: stream breaks, partial incoming discarded\n") }
  :: atomic { alive[T] && finalm -> finalm = 0;
       if :: tVM == VINC -> tVM = VINCF; ackm = 1 :: else -> skip fi;
       printf("T RECV final state, tVM=%d ack=%d\n", tVM, ackm) }
  :: atomic { alive[T] && tVM == VINCF && !tAP && (TVIEWOK || ACTVIEW == 0) && (tL || !ACTGRANT) ->
       printf("T decides to Activate (view %d/%d/%d tL=%d)\n", VPH(T), VOW(T), VEP(T), tL);
       if :: LATE -> tAP = 1 :: else -> ACTIVATE fi }
  :: atomic { tAP -> tAP = 0; ACTIVATE }
  :: atomic { alive[T] && (tVM == VINC || tVM == VINCF) && (VPH(T) == RB || VEP(T) > E1) ->
       tVM = VDEAD; tAP = 0; printf("T view: rolled back / newer epoch -> kills incoming\n") }
  :: atomic { alive[T] && (tVM == VRUN || tVM == VFRZ) && (VOW(T) != T || VEP(T) != E1) ->
       tVM = VDEAD; printf("T view: group gone -> kills its VM\n") }
  :: atomic { alive[T] && vw[T] < nh-1 -> vw[T]++; printf("T applies entry %d\n", vw[T]) }

  /* ---------------- leaders and the log ---------------- */
  :: atomic { !ldr && readym && !pc -> readym = 0; pc = 1;
       if :: CPH == INFL -> PROPOSE(KCOMMIT); printf("leader RECV READY, proposes CommitMove\n")
          :: else -> skip fi }
  :: atomic { !ldr && !pr && CPH == INFL -> pr = 1; PROPOSE(KRB); printf("leader cancels: proposes EndMove\n") }
  :: atomic { pn > 0 -> applyHead() }
  /* leader change: a prefix of the old leader's entries lands (committed
     by the new leader's barrier), the rest is lost, and so is a READY in
     flight; the new leader acts on the record after its barrier */
  :: atomic { willLdr && !ldr ->
       printf("LEADER CHANGE with %d entries pending\n", pn);
       do
       :: pn > 0 ->
            if :: WITNESSES && pq[0] == KCOMMIT && CPH == INFL -> landed = 1 :: else -> skip fi;
            applyHead()
       :: true -> break
       od;
       if :: WITNESSES && (pq[0] == KCOMMIT || pq[1] == KCOMMIT) -> dropped = 1 :: else -> skip fi;
       pn = 0; pq[0] = 0; pq[1] = 0; readym = 0; ldr = 1 }
  :: atomic { ldr && !nd -> nd = 1;
       if
       :: CPH == INFL && NEWLDR == 1 -> PROPOSE(KCOMMIT); printf("new leader completes the op in flight\n")
       :: CPH == INFL && NEWLDR != 1 -> PROPOSE(KRB); printf("new leader rolls back the op in flight\n")
       :: CPH == COMM && NEWLDR == 2 -> PROPOSE(KBRB); printf("new leader rolls back the committed op\n")
       :: CPH == COMM && NEWLDR == 3 -> PROPOSE(KRB); printf("new leader tries EndMove on the committed op\n")
       :: else -> printf("new leader: op phase %d, completes\n", CPH)
       fi }
  /* failover of a fenced owner (a node that dies or is cut off): it ends a
     move in flight as rolled back, like the FSM's endMoveOf */
  :: atomic { FAILOVER && !fo && ((COW == S && !sL) || (COW == T && !tL)) ->
       fo = 1; gm[COW] = 0;
       if
       :: COW != S && alive[S] -> fnode = S
       :: COW != T && alive[T] -> fnode = T
       :: true -> fnode = F
       fi;
       if
       :: CPH == INFL -> APPEND(RB, fnode, CEP+1)
       :: else -> APPEND(CPH, fnode, CEP+1)
       fi;
       printf("FAILOVER to %d: (%d, %d, %d)\n", fnode, CPH, COW, CEP) }
  :: atomic { fo && !fRun && (fnode == F || alive[fnode]) -> fRun = 1; printf("fresh start on %d\n", fnode) }

  /* ---------------- a crash ---------------- */
  :: atomic { willCrash != 0 && !crashed -> crashed = 1;
       if
       :: willCrash != 3 -> alive[S] = 0; sVM = VDEAD; sRP = 0; gm[S] = 0;
          if :: fo && fnode == S -> fRun = 0 :: else -> skip fi; printf("S CRASHES\n")
       :: willCrash != 2 -> alive[T] = 0; if :: tVM != VNONE -> tVM = VDEAD :: else -> skip fi; tAP = 0; gm[T] = 0;
          if :: fo && fnode == T -> fRun = 0 :: else -> skip fi; printf("T CRASHES\n")
       fi }

  /* ---------------- nothing can move: the end check ---------------- */
  :: timeout ->
       printf("END record=(%d,%d,%d) sVM=%d tVM=%d fo=%d fnode=%d fRun=%d alive=%d%d\n",
              CPH, COW, CEP, sVM, tVM, fo, fnode, fRun, alive[S], alive[T]);
       if :: !(ENDOK)-> printf("VIOLATED end_all_or_nothing\n") :: else -> skip fi;
       assert(ENDOK); break
  od
}

active proctype monitor()
{
  byte w;   /* witness n reached: "w = n" is missing from pan's unreached list */
end:
  do
  :: d_step {
       !(INV) ->
       printf("VIOLATION: runners=%d sVM=%d tVM=%d fRun=%d record=(%d,%d,%d) alive=%d%d\n",
              RUNNERS, sVM, tVM, fRun, CPH, COW, CEP, alive[S], alive[T]);
       if :: !(ONE_RUNNER)    -> printf("VIOLATED one_runner\n")     :: else -> skip fi;
       if :: !(TGT_COMMITTED) -> printf("VIOLATED target_only_committed\n") :: else -> skip fi;
       if :: !(SRC_NOT_AFTER) -> printf("VIOLATED source_not_after_commit\n") :: else -> skip fi;
       if :: !(ALL_OR_NOTHING)-> printf("VIOLATED all_or_nothing\n") :: else -> skip fi;
       assert(INV)
     }
#if WITNESSES
  :: atomic { W1 -> printf("witness W1 reached\n"); w = 1; w = 0 }
  :: atomic { W2 -> printf("witness W2 reached\n"); w = 2; w = 0 }
  :: atomic { W3 -> printf("witness W3 reached\n"); w = 3; w = 0 }
  :: atomic { W4 -> printf("witness W4 reached\n"); w = 4; w = 0 }
  :: atomic { W5 -> printf("witness W5 reached\n"); w = 5; w = 0 }
  :: atomic { W6 -> printf("witness W6 reached\n"); w = 6; w = 0 }
#endif
  od
}
