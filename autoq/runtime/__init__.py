"""Running a model: ORT session settings (`session`), measured once per machine (`tune`), and the
one model runner (`runner`, optionally streamed on a thread by `stream`)."""
