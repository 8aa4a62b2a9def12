# Rules for the graph stage(s).
