"""The driver's front end: read -> validate -> split -> index in the driver process, with Arrow and
numpy, for inputs the driver can hold.

Each step gives exactly what its Spark counterpart gives (the same rows, reasons, counts, merged
ratings, ID types, split and ID maps), and the tests hold both to that on the same inputs. Where it
cannot be sure of that for some input (local.read.Unreadable) the caller uses the Spark steps. Its
point is the cold start: a fresh Spark application pays seconds for its first SQL jobs (planning,
code generation, JIT), while the same work on a few million rows in Arrow and numpy takes a fraction
of that (docs/performance.md). Chosen by data.front_end (mf_spark.data.prepare).
"""
