module github.com/fintegrate/ipbudget

go 1.22
