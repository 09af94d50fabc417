# chart.gp: the headline ratios of docs/BENCHMARKS.md as a bar chart, each
# bar beside its target (a black dash).  Called by tests/bench/report.sh:
#
#   gnuplot -e "datafile='F'; outfile='P'; subtitle='S'" chart.gp
#
# datafile columns: index, "label", measured ratio, target, met (1/0),
# "target text".
set terminal pngcairo size 1200,600 font "DejaVu Sans,10"
set output outfile
set title "duplex: headline ratios against the targets of issue 4\n{/*0.8 ".subtitle."}"
set logscale y
set yrange [0.04:200]
set ylabel "ratio (log scale)"
set grid ytics
set xrange [-0.6:6.6]
set xtics rotate by -20 left nomirror
set bmargin 9
set rmargin 18
set key top left
set style fill solid 0.8 border -1
set boxwidth 0.6
# Bars of ratio 0 (not measured) are left out; the measured value is
# written at the foot of its bar, the target beside its dash.
plot datafile using 1:($3 > 0 ? $3 : NaN):($5 > 0 ? 0x2e8b57 : 0xcd3333):xtic(2) \
        with boxes lc rgb variable title "measured (green: target met, red: not)", \
     '' using ($1 - 0.36):4:(0.72):(0) with vectors nohead lw 3 lc rgb "black" \
        title "target", \
     '' using 1:(0.055):($3 > 0 ? sprintf("%.2f", $3) : "n/a") with labels \
        font ",11" notitle, \
     '' using ($1 + 0.38):4:6 with labels left font ",9" notitle
