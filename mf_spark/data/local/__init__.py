"""The front end's Arrow and numpy functions: read a file (read), judge its rows and merge repeated
pairs (validate), split a group of users (split). mf_spark.data.front runs them in the driver
process or in executor tasks.

Each step gives exactly what its Spark counterpart gives (the same rows, reasons, counts, merged
ratings, ID types, split and ID maps), and the tests hold both to that on the same inputs. Where it
cannot be sure of that for some input (local.read.Unreadable) the caller uses the Spark steps. In the
driver the point is the cold start: a fresh Spark application pays seconds for its first SQL jobs (planning,
code generation, JIT), while the same work on a few million rows in Arrow and numpy takes a fraction
of that (docs/performance.md). Chosen by data.front_end (mf_spark.data.prepare).
"""
