"""Jobs: what a client asks for and the rules it must pass before anything is queued.

`models` holds the job and aggregation records as Redis stores them; `validation` checks a
request against the original's contract; `gourl` parses URLs the way Go's net/url does, so
what the original accepted is accepted here and nothing else.
"""
