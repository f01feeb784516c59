"""Search drivers: evosax strategies for continuous genomes (``es``)."""
